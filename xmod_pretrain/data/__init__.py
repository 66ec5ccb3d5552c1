"""Training data: prepared shards and their checks (shards.py), the language sampler
(sampler.py), masking (masking.py), and data prepared on first use (prepared.py)."""
