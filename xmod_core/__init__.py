"""The atoms that data preparation and training both stand on, and that depend on neither.

``errors`` (the UserError base), ``atomic`` (writes a reader never sees half of), ``languages``
(xx_YY codes), ``tokenizer`` (SentencePiece in XLM-R's id layout), ``shards`` (the prepared-data
format: manifest, token dtype, tokenizer check) and ``outputs`` (where a command may write, and
the run directory's names). ``data_prep`` writes the format; ``xmod_pretrain`` reads it and calls
``data_prep`` to prepare data on first use; nothing here imports either.
"""
