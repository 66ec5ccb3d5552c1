"""File helpers: atomic writes (a reader sees the old file or the complete new one, never a
partial one), fsync of trees, content hashes, file modes that follow the umask."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, it replaces ``path``.

    The temporary file sits in the same folder (``os.replace`` is atomic only within one file
    system) and is removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name, str(os.getpid())))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a crash
    finally:
        tmp.unlink(missing_ok=True)


def temporary_name(name: str, writer: str = "*") -> str:
    """The name ``atomic_path`` writes ``name`` under, by process ``writer`` (``*``: a glob
    pattern for any writer's)."""
    return f".{name}.tmp-{writer}"


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (creations, renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """Flush every file and folder under ``path``, before the tree is renamed into place."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only swap it, which
    would race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc (not Linux): swap it out and straight back
    os.umask(mask)
    return mask


def follow_umask(path: str | Path) -> None:
    """Give a file the mode any new file gets (0644 under umask 022).

    NOTE: safetensors' ``save_file`` creates its file with mode 0600 whatever the umask, so a run
    shared on a cluster filesystem would be unreadable to the group: call this after each one.
    """
    os.chmod(path, 0o666 & ~current_umask())
