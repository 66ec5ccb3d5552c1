"""transformers interop: everything that reads or writes transformers' X-MOD format lives here.

    config      XmodConfig (config.json) <-> ModelConfig
    weights     weight import (``init_from``, add-language from a folder) and export
    tokenizer   tokenizer.json with byte fallback, and the folder's SentencePiece model
    folder      whole folders: ``export_model`` / ``export_run`` / ``export_classifier``,
                ``open_hf_folder``

Callers import from this package; the command ``xmod_pretrain export`` is ``export.py``.
"""

from xmod_pretrain.interop.config import (
    HF_CONFIG,
    TransformersFolderError,
    hf_config,
    model_config_from_hf,
)
from xmod_pretrain.interop.folder import (
    HFCheckpoint,
    export_classifier,
    export_model,
    export_run,
    is_hf_folder,
    open_hf_folder,
)
from xmod_pretrain.interop.tokenizer import (
    build_tokenizer,
    hf_tokenizer_file,
    write_tokenizer_files,
)
from xmod_pretrain.interop.weights import (
    WeightMismatchError,
    check_weights,
    expected_shapes,
    load_hf_weights,
    model_weights,
    read_hf_weights,
    run_weights,
)

__all__ = [
    "HF_CONFIG", "HFCheckpoint", "TransformersFolderError", "WeightMismatchError",
    "build_tokenizer", "check_weights", "expected_shapes", "export_classifier", "export_model", "export_run",
    "hf_config", "hf_tokenizer_file", "is_hf_folder", "load_hf_weights", "model_config_from_hf",
    "model_weights", "open_hf_folder", "read_hf_weights", "run_weights",
    "write_tokenizer_files",
]
