"""The one error type of data preparation."""

from xmod_core.errors import UserError


class DataPrepError(UserError, ValueError):
    """Input that cannot be prepared: the message names the file, byte offset or language."""
