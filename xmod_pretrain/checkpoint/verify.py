"""Checksums: every file of a checkpoint hashed when it is written, and verified when it is read."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xmod_core.atomic import file_sha256
from xmod_pretrain.checkpoint.language_files import MANIFEST, language_manifest
from xmod_pretrain.checkpoint.layout import CHECKSUMS, CheckpointCorrupt


def _hash_files(folder: Path, names: list[str]) -> list[str]:
    """sha256 of each file, several at a time: hashlib releases the GIL on large buffers."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda name: file_sha256(folder / name), names))


def write_checksums(folder: Path) -> None:
    """``folder/checksums.json``: sha256 and size of every file under ``folder``."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name != CHECKSUMS)
    hashes = _hash_files(folder, names)
    listing = {name: {"sha256": digest, "size": (folder / name).stat().st_size}
               for name, digest in zip(names, hashes)}
    (folder / CHECKSUMS).write_text(json.dumps(listing, indent=1) + "\n", encoding="utf-8")


def verify_checkpoint(path: Path, files: Iterable[str] | None = None) -> None:
    """Check ``files`` of the checkpoint ``path`` (all it holds when None) against its
    checksums.json; CheckpointCorrupt names the first bad file (missing, wrong size, wrong hash).

    Cost: every byte is read and hashed, about 1-2 s per GB per core (sha256 at 0.5-1 GB/s) when
    the file is cached, the disk's read rate when not; files are hashed in parallel threads.
    Checkpoints written before checksums existed have no checksums.json and are accepted as they
    are.
    """
    listing_path = path / CHECKSUMS
    if not listing_path.is_file():
        return
    listing = _read_listing(listing_path)
    _check(path, listing, sorted(listing) if files is None else list(files), CHECKSUMS)
    if files is None:
        verify_language_files(path)


def verify_language_files(path: Path, languages: Collection[str] | None = None) -> None:
    """Check the language files the checkpoint ``path``'s manifest names (they live beside the
    checkpoints, shared by several) against the sha256 and size it recorded: those of
    ``languages``, or all."""
    entries = {entry["file"]: entry for code, entry in (language_manifest(path) or {}).items()
               if languages is None or code in languages}
    _check(path.parent, entries, sorted(entries), f"{path.name}/{MANIFEST}")


def _check(folder: Path, listing: dict[str, dict], names: list[str], listed_in: str) -> None:
    for name in names:  # sizes first: cheap, and they catch truncation
        _check_size(folder, name, listing, listed_in)
    for name, digest in zip(names, _hash_files(folder, names)):
        if digest != listing[name]["sha256"]:
            raise _corrupt(folder, name, f"its sha256 is {digest[:16]}..., not the "
                                         f"{listing[name]['sha256'][:16]}... recorded", listed_in)


def _read_listing(listing_path: Path) -> dict[str, dict]:
    try:
        listing = json.loads(listing_path.read_text(encoding="utf-8"))
        if all(isinstance(v["sha256"], str) and isinstance(v["size"], int)
               for v in listing.values()):
            return listing
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    raise _corrupt(listing_path.parent, CHECKSUMS, "it is not a readable checksum list",
                   CHECKSUMS)


def _check_size(path: Path, name: str, listing: dict[str, dict], listed_in: str) -> None:
    if name not in listing:
        raise _corrupt(path, name, "it is not listed", listed_in)
    file = path / name
    if not file.is_file():
        raise _corrupt(path, name, "it is missing", listed_in)
    size, expected = file.stat().st_size, listing[name]["size"]
    if size != expected:
        raise _corrupt(path, name, f"it is {size} bytes, not the {expected} recorded", listed_in)


def _corrupt(path: Path, name: str, problem: str, listed_in: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"checkpoint file {path / name} is corrupt: {problem} in "
                             f"{listed_in}. Restore it from a copy, or use an earlier checkpoint "
                             "(resuming training moves this one aside and falls back by itself)")
