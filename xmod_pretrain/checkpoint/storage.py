"""Failed writes: a full disk, a quota or a file-size limit told apart from other errors, and
named with the file and the filesystem it was filling."""

from __future__ import annotations

import errno
import os
import re
import resource
import signal
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from xmod_core.atomic import follow_umask
from xmod_core.errors import UserError


class CheckpointWriteError(UserError):
    """A save failed for lack of space or a file-size limit; the previous checkpoint stands."""


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
ZIP_WRITER_ERRORS = ("inline_container", "PytorchStreamWriter")  # torch.save's out-of-space errors


def ignore_file_size_signal() -> None:
    """Past a ``ulimit -f`` limit the kernel sends SIGXFSZ, which kills the process; ignored, the
    write fails with EFBIG instead, which a save reports like a full disk."""
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def write_failure(tmp: Path, write: Callable[[], None]) -> str | None:
    """Run ``write`` (which fills ``tmp``); the reason it ran out of space or hit the file-size
    limit, None when it succeeded. Any other error propagates."""
    try:
        write()
    except (OSError, RuntimeError) as err:
        code, path = _disk_error(err, tmp)
        if code is None:
            raise
        if code == errno.EFBIG:
            return f"file size limit reached while writing {path}"
        quota = " (disk quota exceeded)" if code == errno.EDQUOT else ""
        return f"no space left on {mount_of(path)}{quota} while writing {path}"
    return None


def _disk_error(err: Exception, tmp: Path) -> tuple[int | None, Path]:
    """(errno, file) of a failed write; errno None when it is no disk error."""
    if isinstance(err, OSError):
        code = err.errno if err.errno in DISK_ERRNOS else None
        return code, Path(err.filename) if err.filename else _newest_file(tmp)
    if not any(s in str(err) for s in ZIP_WRITER_ERRORS):
        return None, tmp
    # torch's zip writer drops the errno: a file at the size limit tells EFBIG from ENOSPC.
    path = _newest_file(tmp)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    at_limit = limit != resource.RLIM_INFINITY and path.is_file() and path.stat().st_size >= limit
    return (errno.EFBIG if at_limit else errno.ENOSPC), path


def _newest_file(folder: Path) -> Path:
    """The file written last under ``folder`` (the one a failed write was filling)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else folder


def mount_of(path: Path) -> str:
    """``MOUNT_POINT (FSTYPE)`` of the filesystem holding ``path``, from /proc/self/mounts."""
    target = os.path.realpath(path)
    best, fstype = "", "?"
    try:
        lines = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return "the filesystem holding it"
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])  # \040: space
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):  # the deepest mount; the last one mounted wins
            best, fstype = mount, fields[2]
    return f"{best} ({fstype})"


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path,
                     metadata: dict[str, str] | None = None) -> None:
    """``save_file`` with an OSError naming ``path`` when the disk fills, and the umask's mode."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as err:  # SafetensorError: "... I/O error: ... (os error 28)"
        found = re.search(r"os error (\d+)", str(err))
        if found is None:
            raise
        code = int(found[1])
        raise OSError(code, os.strerror(code), str(path)) from err
    follow_umask(path)
