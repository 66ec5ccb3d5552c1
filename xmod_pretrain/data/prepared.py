"""Prepared data on first use: the one place a command turns raw text into shards by itself.

Pre-training, add-language, the curse experiment and ``evaluate --text`` all read shards through a
manifest; when the folder has none yet, they prepare it here from a ``data_prep`` source: rank 0
writes (a failure removes a folder this call made), every rank waits, then reads the manifest.
"""

from __future__ import annotations

from pathlib import Path

from xmod_core.outputs import new_output_dir
from xmod_core.shards import check_run_tokenizer, is_prepared, read_manifest
from xmod_pretrain.data.shards import DataError
from xmod_pretrain.training.distributed import DistInfo, barrier


def nothing_prepared(data_dir: str | Path) -> str:
    """What to do when a run's data is neither prepared nor preparable (``+exp=base`` on a new
    machine): what it needs, the command, and what it costs."""
    return (
        f"no prepared data in {data_dir} and data.source is null: this experiment trains on "
        "shards prepared beforehand. They need a SentencePiece model in XLM-R's layout (for "
        "xmod-base, XLM-R's own sentencepiece.bpe.model: in a transformers cache under "
        "~/.cache/huggingface/hub/models--FacebookAI--xlm-roberta-base/snapshots/*/, or in a "
        "copy of facebook/xmod-base) and text per language (a CC100-style folder of "
        "<xx_YY>.txt or .txt.xz files, a JSON manifest, or hf:NAME). Prepare them with "
        f"`xmod_pretrain prepare --source CORPUS --tokenizer sentencepiece.bpe.model --out "
        f"{data_dir} --workers N`: encoding ran at about 15 MB/s (70 s a GB) per worker process "
        "on a 2-core CPU, and the shards take 4 bytes a token (1.1x the text with an "
        "8000-piece tokenizer, less with a larger vocabulary). Or point data.dir at data "
        "prepared already, or set data.source to prepare it on first use")


def ensure_prepared(data_dir: str | Path, source: str | Path | None, *,
                    info: DistInfo | None = None, tokenizer: Path | None = None,
                    languages: list[str] | None = None, vocab_size: int = 8000,
                    valid_fraction: float = 0.05, workers: int = 1,
                    option: str = "data.dir", announce: str | None = None,
                    quiet: bool = False, run_dir: str | Path | None = None) -> dict:
    """The manifest of ``data_dir``, preparing it from ``source`` first if it has none.

    ``tokenizer``: encode with this SentencePiece model (a source run's, a transformers
    folder's) instead of training one, and refuse a folder prepared earlier with another one.
    ``languages``: only these of the source. ``info``: the ranks to coordinate (None: this
    process alone). ``announce``: the line printed when preparing (None: a default one;
    ``quiet``: none). ``run_dir``: the run the data is for, which ``data_dir`` may lie in
    (add-language's ``run_dir/data``); it may lie in no other run."""
    if not is_prepared(data_dir):
        if source is None:
            raise DataError(nothing_prepared(data_dir))
        if info is None or info.is_main:
            from data_prep import record
            from data_prep.prepare import prepare

            if not quiet:
                print(announce or f"preparing {data_dir} from {source} (first use)", flush=True)
            with new_output_dir(data_dir, overwrite=True, option=option, data=True,
                                own_run=run_dir, resumable=record.worth_resuming) as out:
                prepare(source, out, vocab_size=vocab_size, tokenizer=tokenizer,
                        valid_fraction=valid_fraction, languages=languages, workers=workers,
                        restart=True)  # what another start left: resumed if asked the same
    if info is not None:  # every rank, whether or not it saw the manifest missing
        barrier()
    if tokenizer is not None:
        check_run_tokenizer(tokenizer, data_dir)  # a folder prepared earlier, by another model
    return read_manifest(data_dir)
