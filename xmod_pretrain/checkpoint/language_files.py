"""Each language's module weights and AdamW state in a file of its own, shared by checkpoints.

A save writes a file only for the languages that trained since the last save; the checkpoint's
manifest names, for every language, the file holding its current state (written at that save or
an earlier one). Save time and bytes then grow with the languages trained since the last save,
not with the languages registered. Layout::

    run_dir/checkpoints/languages/de_DE/step_00000200-1a2b3c4d.safetensors
                        step_00000200/languages.json.manifest   {code: {file, sha256, size}}

A file is written under a temporary name, flushed and renamed before the checkpoint that names it
is published, and gets a name no other save uses (its step and a random token), so a save never
touches a file an older checkpoint names. Files that no complete checkpoint names any more (their
checkpoints pruned, or a save that died) are removed after each publish.

In a file, a parameter's weight keeps its state-dict name and its AdamW state follows it as
``<name>::exp_avg``, ``<name>::exp_avg_sq`` and ``<name>::step``.

A new run that starts from another run's languages as they are (add-language: every language
but the new ones is frozen) links their files into its own ``languages/`` at its first save
(``InheritedFiles``): hard links, so no byte is written or stored twice; a copy where the two
runs are on different filesystems.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from xmod_core.atomic import file_sha256, fsync_dir
from xmod_pretrain.checkpoint.layout import complete_checkpoints, step_tag
from xmod_pretrain.checkpoint.storage import save_safetensors

LANGUAGE_DIR = "languages"  # in a run's checkpoints/: one folder per language
MANIFEST = "languages.manifest.json"  # in a checkpoint
STATE_SEPARATOR = "::"

Manifest = dict[str, dict]  # code -> {"file": path relative to checkpoints/, "sha256", "size"}


def write_language_files(root: Path, step: int,
                         states: dict[str, dict[str, torch.Tensor]]) -> Manifest:
    """Write each language's tensors to a new file under ``root/languages/<code>/``, flushed to
    disk; return their manifest entries."""
    token = secrets.token_hex(4)
    entries = {}
    for code, tensors in states.items():
        folder = root / LANGUAGE_DIR / code
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{step_tag(step)}-{token}.safetensors"
        tmp = folder / f".tmp-{final.name}"
        save_safetensors(tensors, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(folder)
        entries[code] = {"file": final.relative_to(root).as_posix(),
                         "sha256": file_sha256(final), "size": final.stat().st_size}
    return entries


@dataclass(frozen=True)
class InheritedFiles:
    """Languages a new run starts with exactly as ``checkpoint`` (another run's) holds them."""

    checkpoint: Path
    manifest: Manifest


def link_language_files(root: Path, inherited: InheritedFiles) -> Manifest:
    """The inherited files under ``root/languages/<code>/`` by the names they have in their
    run, hard-linked (copied and flushed across filesystems); return their manifest entries."""
    entries = {}
    for code, entry in inherited.manifest.items():
        source = inherited.checkpoint.parent / entry["file"]
        folder = root / LANGUAGE_DIR / code
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / source.name
        tmp = folder / f".tmp-{final.name}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(source, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(folder)
        entries[code] = {**entry, "file": final.relative_to(root).as_posix()}
    return entries


def write_manifest(checkpoint: Path, manifest: Manifest) -> None:
    (checkpoint / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                                       encoding="utf-8")


def language_manifest(checkpoint: Path) -> Manifest | None:
    """The checkpoint's manifest; None for a checkpoint whose language modules are in its
    ``model.safetensors`` (a weights-only one, or one written before they had files)."""
    path = checkpoint / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_language_files(checkpoint: Path, manifest: Manifest, with_state: bool
                        ) -> dict[str, dict[str, torch.Tensor]]:
    """Each language's tensors: weights, and with ``with_state`` their AdamW state too (the
    caller verified them: verify.verify_language_files)."""
    from safetensors.torch import load_file

    read = {}
    for code, entry in manifest.items():
        tensors = load_file(str(checkpoint.parent / entry["file"]))
        read[code] = tensors if with_state else {
            k: v for k, v in tensors.items() if STATE_SEPARATOR not in k}
    return read


def remove_unnamed_files(root: Path) -> list[Path]:
    """Remove the language files no complete checkpoint in ``root`` names (and temporary files
    a dead save left). Only the run lock's holder calls it, after publishing. Returns them."""
    named = set()
    for checkpoint in complete_checkpoints(root):
        manifest = language_manifest(checkpoint) or {}
        named |= {entry["file"] for entry in manifest.values()}
    removed = []
    for path in sorted((root / LANGUAGE_DIR).glob("*/*")):
        if path.is_file() and path.relative_to(root).as_posix() not in named:
            path.unlink()
            removed.append(path)
    return removed
