"""The one error type of data preparation."""


class DataPrepError(ValueError):
    """Input that cannot be prepared: the message names the file, byte offset or language."""
