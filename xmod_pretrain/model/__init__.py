"""The X-MOD model: the encoder, its per-language bottleneck modules and the tied masked-LM head
(xmod.py)."""
