"""Raw text -> SentencePiece tokenizer + per-language uint32 token shards + manifest.

``python -m data_prep.prepare`` prepares a training folder; ``python -m data_prep.build_bundle``
rebuilds the bundled demo corpus in ``data_prep/corpus`` from its source packages.
"""

from data_prep.errors import DataPrepError

__all__ = ["DataPrepError"]
