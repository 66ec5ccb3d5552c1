"""xmod-pretrain: pre-train X-MOD modular multilingual masked-LMs and grow them by languages."""

__version__ = "0.1.0"
