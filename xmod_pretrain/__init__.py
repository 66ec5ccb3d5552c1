"""xmod-pretrain: pre-train X-MOD modular multilingual masked-LMs and grow them by languages."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xmod_pretrain.runs.inference import encode_padded, load_run

__version__ = "0.1.0"
__all__ = ["__version__", "encode_padded", "load_run"]


def __getattr__(name: str):
    # The inference API is imported on first use (PEP 562), so ``import xmod_pretrain`` stays
    # light: no torch, safetensors or OmegaConf until inference is asked for.
    if name in ("load_run", "encode_padded"):
        from xmod_pretrain.runs import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
