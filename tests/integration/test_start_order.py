"""What a start does before DeepSpeed: refusals that need no model come first, without importing
it (or building its op); a NaN stops in one line; each install builds DeepSpeed's ops apart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.launch import TINY_MODEL, run_training, tree_hash
from xmod_pretrain.runs.lock import RunLock

pytestmark = pytest.mark.integration

# The real CLI in a process that says, as it exits, which heavy modules it imported.
PROBE = """
import atexit, sys
heavy = ("torch", "deepspeed")
atexit.register(lambda: print("imported:", *[m for m in heavy if m in sys.modules]))
from xmod_pretrain.cli import main
main(sys.argv[1:])
"""


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xmod_pretrain: error: "), proc.stderr[-3000:]
    return lines[0]


def test_a_locked_run_is_refused_before_deepspeed_is_imported(tiny_data, tmp_path):
    run = tmp_path / "run"
    lock = RunLock(run)
    lock.acquire()  # held by this live process: a second trainer must wait
    try:
        before = tree_hash(run)
        proc = probe("+exp=demo", f"run_dir={run}", f"data.dir={tiny_data}", "data.source=null",
                     *TINY_MODEL)
        assert tree_hash(run) == before
    finally:
        lock.release()
    assert f"run_dir {run} is in use by pid {os.getpid()}" in one_error_line(proc)
    assert proc.stdout.splitlines()[-1] == "imported: torch"  # the process group's, not DeepSpeed


def test_add_language_refuses_a_missing_source_before_importing_torch(tmp_path):
    proc = probe("add-language", "--lang", "yo_NG", "--from", str(tmp_path / "dmeo"))
    assert f"--from {tmp_path / 'dmeo'} does not exist" in one_error_line(proc)
    assert proc.stdout.splitlines()[-1] == "imported:"


def test_a_nan_loss_is_one_line_and_exit_1(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = run_training(run, tiny_data, "optim.lr=1e6", "train.max_steps=20", "train.log_every=5",
                        "train.eval_every=0", check=False)
    line = one_error_line(proc)
    assert "loss is NaN or inf between steps" in line and "stopping without saving" in line
    assert not list(run.glob("checkpoints/step_*"))


EXTENSIONS_DIR = """
from xmod_pretrain.training.distributed import use_own_extensions_dir
from torch.utils.cpp_extension import _get_build_directory
use_own_extensions_dir()
print(_get_build_directory("deepspeed_shm_comm", False))  # where DeepSpeed's builder builds it
"""


def test_two_installs_build_deepspeeds_op_in_folders_of_their_own(tmp_path):
    """Two venvs under one home (one cache): each builds in its own folder, the same at every
    start, so neither rebuilds over the other's build; a TORCH_EXTENSIONS_DIR given is kept."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # the home's cache, here

    def build_dir(python: Path, **extra: str) -> Path:
        out = subprocess.run([str(python), "-c", EXTENSIONS_DIR], capture_output=True, text=True,
                             timeout=120, env={**env, **extra}, check=True).stdout
        return Path(out.strip())

    pythons = []
    for name in ("venv_a", "venv_b"):  # the same packages, other installs
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                        str(tmp_path / name)], check=True, timeout=120)
        pythons.append(tmp_path / name / "bin" / "python")
    a, b = (build_dir(python) for python in pythons)
    assert a != b and a.parent.parent == b.parent.parent == tmp_path / "cache" / "torch_extensions"
    assert build_dir(pythons[0]) == a  # the next start of the same install finds its build
    given = tmp_path / "mine"
    assert build_dir(pythons[1], TORCH_EXTENSIONS_DIR=str(given)) == given / "deepspeed_shm_comm"
