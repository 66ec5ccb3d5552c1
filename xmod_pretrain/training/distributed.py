"""Process-group set-up for one process, torchrun, the deepspeed launcher and srun."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# What a launcher would set, for a plain ``python -m xmod_pretrain``.
WORLD_OF_ONE = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class _Unactionable(logging.Filter):
    """DeepSpeed lines every start prints and no user can act on."""

    # ZeRO with our AdamW: chosen on purpose (engine.py: zero_allow_untested_optimizer).
    WORDS = ("untested optimizer",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(words in record.getMessage() for words in self.WORDS)


def quiet_deepspeed() -> None:
    """Before DeepSpeed's first import: name the CPU accelerator where torch sees no CUDA (else
    every start warns "Setting accelerator to CPU ... we were unable to detect it"), drop its
    untested-optimizer warning, and the FutureWarnings DeepSpeed's own calls of deprecated
    torch.distributed functions raise (DeepSpeed's to fix, not ours or the user's)."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    logging.getLogger("DeepSpeed").addFilter(_Unactionable())


def use_own_extensions_dir() -> Path:
    """Where DeepSpeed builds its ops (``TORCH_EXTENSIONS_DIR``): one folder per install.

    torch's default is one folder for all of a user's Python installs, and it rebuilds an op whose
    sources or flags changed, which name the install's paths: two venvs under one home would
    rebuild the op over each other's build at every start. Unless the user set the variable, each
    install (its prefix, and the folders and versions of its torch and DeepSpeed) gets a folder
    of its own under torch's default, set before DeepSpeed builds anything."""
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        from torch.utils.cpp_extension import get_default_build_root

        install = [sys.prefix] + [f"{_package_dir(name)} {importlib.metadata.version(name)}"
                                  for name in ("torch", "deepspeed")]
        digest = hashlib.sha256("\n".join(install).encode()).hexdigest()[:12]
        own = Path(get_default_build_root()) / f"install-{digest}"
        os.environ["TORCH_EXTENSIONS_DIR"] = str(own)
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def announce_cpu_comm_build() -> None:
    """DeepSpeed's CPU path compiles a shared-memory communication op the first time it runs
    with an install (about 40 s on 2 cores, then cached): say so, so the start does not look
    hung; and say so when another process's build holds it up (torch waits, silently and for
    ever, while its lock file exists, even one that a killed build left behind)."""
    root = use_own_extensions_dir()
    if not cpu_comm_build_is_current(root):
        print("DeepSpeed compiles its CPU communication op for this install with the C++ "
              f"compiler (about 40 s on 2 cores, once; cached in {root})", flush=True)
    for lock in root.glob("**/deepspeed_shm_comm/lock"):
        print(f"waiting for another process that builds DeepSpeed's CPU communication op in "
              f"{lock.parent} (if none does, a build was killed: remove {lock})", flush=True)


def _package_dir(name: str) -> str:
    """Where an installed package's files are, without importing it."""
    return importlib.util.find_spec(name).submodule_search_locations[0]


def cpu_comm_build_is_current(root: Path) -> bool:
    """A built op whose build file names this DeepSpeed's sources and this torch's headers:
    torch rebuilds an extension whose sources or flags changed (the paths are in the flags)."""
    installs = [_package_dir(name) for name in ("deepspeed", "torch")]
    for ninja in root.glob("**/deepspeed_shm_comm/build.ninja"):  # with or without py311_cpu/
        if ninja.with_name("deepspeed_shm_comm.so").is_file():
            text = ninja.read_text(encoding="utf-8", errors="replace")
            if all(f"{path}/" in text for path in installs):
                return True
    return False


def init_distributed(timeout_s: int) -> DistInfo:
    """The process group and DeepSpeed's communication, in one call (``join_process_group``,
    then ``start_deepspeed``)."""
    info = join_process_group(timeout_s)
    start_deepspeed(info, timeout_s)
    return info


def join_process_group(timeout_s: int) -> DistInfo:
    """Join (or, alone, create) the default process group; gloo on CPU, nccl on GPUs. torch's
    only: DeepSpeed, slow to import and maybe to build its op, starts later (start_deepspeed), so
    that the run lock and every check come first.

    A launcher (torchrun, deepspeed, srun + torchrun) sets RANK/WORLD_SIZE; a plain
    ``python -m xmod_pretrain`` is a world of one on a local port the system picks as the
    group's store binds it (port 0): a port chosen first and bound later could be taken in
    between by another process. Those variables last as long as the group
    (``shutdown_distributed``).
    """
    if "RANK" not in os.environ:
        os.environ.update(WORLD_OF_ONE)
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
    )
    if not dist.is_initialized():
        options: dict[str, Any] = {"timeout": timedelta(seconds=timeout_s)}
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
            # As DeepSpeed's own start does: NCCL's communicators bound to this GPU, except on
            # the torch versions where that hangs (pytorch/pytorch#153960).
            if info.world_size > 1 and not "2.6.0" < torch.__version__ < "2.7.1":
                options["device_id"] = torch.device("cuda", info.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", **options)
    return info


def start_deepspeed(info: DistInfo, timeout_s: int) -> None:
    """DeepSpeed's communication over the process group (on a CPU, its op built on first use)."""
    if "deepspeed" in sys.modules and sys.modules["deepspeed"].comm.is_initialized():
        return
    use_own_extensions_dir()
    quiet_deepspeed()
    if info.is_main and not torch.cuda.is_available():
        announce_cpu_comm_build()
    import deepspeed  # imported here: it is slow to import and only needed to train

    # DeepSpeed prints "... deepspeed_shm_comm_op built successfully" at every start, the op
    # cached or not (announce_cpu_comm_build says when it is really built); anything else it
    # prints is passed on.
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            deepspeed.init_distributed(dist_backend=dist.get_backend(),
                                       timeout=timedelta(seconds=timeout_s))
    finally:
        kept = [line for line in captured.getvalue().splitlines(keepends=True)
                if "built successfully" not in line]
        sys.stdout.write("".join(kept))


def shutdown_distributed() -> None:
    """Leave the process group, so that its threads stop before the interpreter exits, and take
    back the variables join_process_group set for a world of one: a subprocess started later by
    this process (a command run in-process, then a launcher) would read MASTER_PORT=0 as its
    rendezvous port."""
    if dist.is_initialized():
        deepspeed = sys.modules.get("deepspeed")
        if deepspeed is not None and deepspeed.comm.is_initialized():
            # DeepSpeed's, which also drops the groups it cached: an engine built later in this
            # process (another run started in-process) then uses the group made for it.
            deepspeed.comm.destroy_process_group()
        else:
            dist.destroy_process_group()
    if all(os.environ.get(name) == value for name, value in WORLD_OF_ONE.items()):
        for name in WORLD_OF_ONE:
            del os.environ[name]


def finish_process() -> None:
    """The clean end of a process that trained: leave the process group; a rank of several then
    ends at once, its output flushed (``os._exit(0)``). At interpreter exit a thread left
    joinable in torch's or DeepSpeed's native code aborts a rank ("terminate called without an
    active exception", exit status 134) in about 1 of 40 two-rank runs of the CLI and up to half
    of the checkpoint bench's, after all its work is saved, and torchrun reports a failure."""
    several = dist.is_initialized() and dist.get_world_size() > 1
    shutdown_distributed()
    if several:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def from_rank0(value: Any, info: DistInfo) -> Any:
    """Rank 0's ``value`` on every rank (every rank calls)."""
    if info.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
