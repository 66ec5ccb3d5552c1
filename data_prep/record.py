"""What a preparation was asked and which of its languages are done: what lets one killed half-way
resume where it stopped, and lets the tasks of a Slurm array share one folder.

    DIR/prepare.json          the request (source, languages, sizes, the tokenizer's hash), and
                              the languages added since (prepare --add-language)
    DIR/<lang>/done.json      the language's manifest entry, written after its two shards
    DIR/tokenizer_sample.json what each language gave a tokenizer trained here (its presence
                              marks the tokenizer as this request's, to keep on resuming)

Both are written atomically. A language counts as done only with a ``done.json`` naming the
folder's tokenizer, so shards of another tokenizer are never reused. The manifest, written when
every language is done, is made of the ``done.json`` entries alone: whichever process writes it,
and however often, it has the same bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from data_prep.errors import DataPrepError
from data_prep.sources import source_name
from xmod_core.atomic import temporary_name, write_text
from xmod_core.shards import MANIFEST, SPLITS

REQUEST_FILE = "prepare.json"
DONE_FILE = "done.json"
SAMPLE_FILE = "tokenizer_sample.json"


def request(source: str, languages: list[str], vocab_size: int, valid_fraction: float,
            tokenizer: str | None, sampling: dict) -> dict:
    """What a preparation is: two with the same request write the same bytes. ``tokenizer`` is
    the sha256 of a given model (None: one is trained, of ``vocab_size`` pieces, on text sampled
    as ``sampling`` says)."""
    return {"source": source_name(source), "languages": languages,
            "valid_fraction": valid_fraction, "tokenizer": tokenizer,
            "vocab_size": None if tokenizer else vocab_size,
            "tokenizer_sample": None if tokenizer else sampling}


def start(out: Path, asked: dict, restart: bool = False) -> bool:
    """Record ``asked`` in ``out``, or check it against the record there; return whether this
    start resumes an earlier one. Another request's record is dropped with ``restart`` (and its
    shards count as not done), refused otherwise: DataPrepError naming what differs."""
    path = out / REQUEST_FILE
    recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if recorded is not None and isinstance(recorded.get("source"), str):
        recorded["source"] = source_name(recorded["source"])  # one recorded before it was absolute
    changed = [f"{key} {recorded.get(key)!r} -> {value!r}" for key, value in asked.items()
               if recorded is not None and recorded.get(key) != value]
    if changed and restart:
        forget(out)
        recorded = None
    if recorded is None:
        write_text(path, _json(asked))
        return False
    if changed:
        raise DataPrepError(f"{out} holds a preparation of another request ({'; '.join(changed)})"
                            ": give the same arguments to resume it, or pass --overwrite to "
                            "start again")
    return True


def added(out: Path) -> dict[str, str]:
    """{language: its source} of the languages added to ``out`` after it was prepared."""
    path = out / REQUEST_FILE
    return json.loads(path.read_text(encoding="utf-8")).get("added", {}) if path.is_file() else {}


def add(out: Path, language: str, source: str) -> None:
    """Record ``language`` as added from ``source`` (its shards done, the manifest not yet
    rewritten)."""
    path = out / REQUEST_FILE
    recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    recorded.setdefault("added", {})[language] = source
    write_text(path, _json(recorded))


def started(out: Path) -> bool:
    """Whether ``out`` holds a preparation's record (work a rerun of the command resumes), or
    one being written: the array tasks of one preparation start together, and the first one's
    temporary file must not make the others take the folder for someone else's."""
    return (out / REQUEST_FILE).is_file() or any(out.glob(temporary_name(REQUEST_FILE)))


def worth_resuming(out: Path) -> bool:
    """Whether ``out`` holds a started preparation with work done (a tokenizer trained, a
    language finished): what a failed first start keeps instead of removing its folder."""
    return started(out) and ((out / SAMPLE_FILE).is_file() or any(out.glob(f"*/{DONE_FILE}")))


def kept(out: Path) -> str:
    """What a failed or interrupted preparation leaves for a rerun to resume, as the end of its
    message; empty when it left nothing."""
    if not worth_resuming(out):
        return ""
    done = sum(1 for _ in out.glob(f"*/{DONE_FILE}"))
    return (f"; {out} keeps its tokenizer and the {done} language(s) finished: the same command "
            "resumes from there")


def forget(out: Path) -> None:
    """Remove an earlier preparation from ``out`` (--overwrite, or another request on first
    use): its request, manifest and tokenizer sample (so its tokenizer is not taken for the new
    request's) and every language folder it wrote, so nothing of it is reused or left behind."""
    for name in (MANIFEST, SAMPLE_FILE, REQUEST_FILE):  # the request last: until then, resumable
        (out / name).unlink(missing_ok=True)
    for folder in out.iterdir() if out.is_dir() else ():
        written = (DONE_FILE, *(f"{split}.bin" for split in SPLITS))
        if folder.is_dir() and any((folder / name).exists() for name in written):
            shutil.rmtree(folder)


def done_entry(out: Path, language: str, tokenizer_sha256: str) -> dict | None:
    """The manifest entry of a language finished with this tokenizer, or None."""
    path = out / language / DONE_FILE
    if not path.is_file():
        return None
    done = json.loads(path.read_text(encoding="utf-8"))
    return done["entry"] if done.get("tokenizer") == tokenizer_sha256 else None


def mark_done(out: Path, language: str, entry: dict, tokenizer_sha256: str) -> None:
    """Record that ``language``'s shards are complete (after both are in place)."""
    write_text(out / language / DONE_FILE, _json({"tokenizer": tokenizer_sha256, "entry": entry}))


def _json(value: dict) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"
