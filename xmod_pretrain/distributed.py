"""Process-group set-up for one process, torchrun, the deepspeed launcher and srun."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def announce_cpu_comm_build() -> None:
    """DeepSpeed's CPU path compiles a shared-memory communication op the first time it runs
    with an install (about 40 s on 2 cores, then cached): say so, so the start does not look
    hung. A cached build from another install (another venv) is rebuilt, and said so too."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    if not cpu_comm_build_is_current(root):
        print("DeepSpeed compiles its CPU communication op for this install with the C++ "
              f"compiler (about 40 s on 2 cores, once; cached in {root})", flush=True)


def cpu_comm_build_is_current(root: Path) -> bool:
    """A built op whose build file names this DeepSpeed's sources and this torch's headers:
    torch rebuilds an extension whose sources or flags changed (the paths are in the flags)."""
    installs = [importlib.util.find_spec(name).submodule_search_locations[0]
                for name in ("deepspeed", "torch")]
    for ninja in root.glob("**/deepspeed_shm_comm/build.ninja"):  # with or without py311_cpu/
        if ninja.with_name("deepspeed_shm_comm.so").is_file():
            text = ninja.read_text(encoding="utf-8", errors="replace")
            if all(f"{path}/" in text for path in installs):
                return True
    return False


def init_distributed(timeout_s: int) -> DistInfo:
    """Join (or, alone, create) the default process group; gloo on CPU, nccl on GPUs.

    A launcher (torchrun, deepspeed, srun + torchrun) sets RANK/WORLD_SIZE; a plain
    ``python -m xmod_pretrain`` is a world of one on a free local port.
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
    )
    if not dist.is_initialized():
        quiet_deepspeed()
        if info.is_main and not torch.cuda.is_available():
            announce_cpu_comm_build()
        import deepspeed  # imported here: it is slow to import and only needed to train

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        # DeepSpeed prints "... deepspeed_shm_comm_op built successfully" at every start, the op
        # cached or not (announce_cpu_comm_build says when it is really built); anything else it
        # prints is passed on.
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                deepspeed.init_distributed(dist_backend=backend,
                                           timeout=timedelta(seconds=timeout_s))
        finally:
            kept = [line for line in captured.getvalue().splitlines(keepends=True)
                    if "built successfully" not in line]
            sys.stdout.write("".join(kept))
    return info


def shutdown_distributed() -> None:
    """Leave the process group at a clean end, so that its threads stop before the interpreter
    exits (left to the exit, one was seen to abort the process: "terminate called without an
    active exception")."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
