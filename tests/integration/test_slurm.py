"""``sbatch slurm/train.sh`` on a real two-node Slurm cluster started on this machine.

The cluster (tests/support/slurm_cluster.sh) is slurmctld plus two slurmd, node1 and node2, on
127.0.1.1 and 127.0.1.2; it needs root, and installs Slurm with apt-get where it is missing. Jobs
run in a pytest tmp dir, so their logs/ and runs/ never land in the repository.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.launch import TINY_MODEL, read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "tests" / "support" / "slurm_cluster.sh"
TRAIN_SH = REPO / "slurm" / "train.sh"
PREPARE_SH = REPO / "slurm" / "prepare.sh"
LSC_BASE = Path("/tmp/xmod-slurm")  # the support script's default: daemons' state, logs, config
SLURM_TOOLS = ("slurmctld", "slurmd", "sbatch", "munged")
LAUNCHER = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
               "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class Cluster:
    """Client side of the local cluster: submit slurm/train.sh, follow a job, read its log."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def command(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, check=True, capture_output=True, text=True,
                              timeout=60).stdout

    def submit(self, workdir: Path, *overrides: str, nodes: int = 2) -> str:
        """sbatch the script as a user would, from ``workdir``; the nodes have no GPU and the
        fake nodes share this machine's cores, hence the options over the script's defaults."""
        (workdir / "logs").mkdir(exist_ok=True)
        return self.command("sbatch", "--parsable", f"--chdir={workdir}", f"--nodes={nodes}",
                            "--gpus-per-node=0", "--cpus-per-task=1", str(TRAIN_SH),
                            *overrides).strip()

    def job(self, job_id: str) -> dict[str, str]:
        text = self.command("scontrol", "-o", "show", "job", job_id)
        return dict(re.findall(r"\b(JobState|ExitCode|Restarts)=(\S+)", text))

    def wait(self, job_id: str, workdir: Path, timeout: float) -> dict[str, str]:
        """Poll until the job ends (sbatch --wait checks far less often); fail with its log."""
        deadline = time.monotonic() + timeout
        while (info := self.job(job_id))["JobState"] not in DONE_STATES:
            if time.monotonic() > deadline:
                self.command("scancel", job_id)
                pytest.fail(f"job {job_id} still {info['JobState']} after {timeout} s\n"
                            f"{job_log(workdir, job_id)[-6000:]}")
            time.sleep(0.5)
        return info


def job_log(workdir: Path, job_id: str) -> str:
    """slurm/train.sh's log: logs/<job name>-<job id>.out, all nodes and restarts together."""
    path = workdir / "logs" / f"xmod-{job_id}.out"
    return path.read_text() if path.exists() else f"({path} not written)"


def assert_completed(info: dict[str, str], workdir: Path, job_id: str) -> str:
    log = job_log(workdir, job_id)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), f"{info}\n{log[-8000:]}"
    return log


def tiny_run(data_dir: Path, *overrides: str) -> list[str]:
    return ["+exp=demo", f"data.dir={data_dir}", "data.source=null", *TINY_MODEL,
            "deepspeed=zero2", "train.threads=1", "train.eval_every=0", *overrides]


@pytest.fixture(scope="module")
def slurm():
    """The two-node cluster, started for this module and stopped after it whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster starts slurmctld, slurmd and munged: needs root")
    # Neither an outer job's variables nor a process group's: a run started in this worker's
    # process (the curse's, transfer's) sets RANK, MASTER_PORT=0 and the like in its environment.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and key not in LAUNCHER}
    env.update(LSC_BASE=str(LSC_BASE), LSC_NODES="2", SLURM_CONF=str(LSC_BASE / "slurm.conf"),
               # what the jobs inherit: this interpreter and this checkout, no wandb, 1 thread each
               PYTHON=sys.executable, PYTHONPATH=str(REPO), WANDB_MODE="disabled",
               OMP_NUM_THREADS="1")
    # One cluster per machine (fixed ports): a second test session waits here for the first.
    with open("/tmp/xmod-slurm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            up = subprocess.run(["bash", str(CLUSTER_SH), "up"], env=env, capture_output=True,
                                text=True, timeout=900)
            if up.returncode != 0:
                if not all(shutil.which(tool) for tool in SLURM_TOOLS):
                    pytest.skip(f"Slurm is not installed and apt-get could not install it:\n"
                                f"{up.stderr[-3000:]}")
                pytest.fail(f"the local Slurm cluster did not start:\n{up.stdout}{up.stderr}")
            yield Cluster(env)
        finally:
            subprocess.run(["bash", str(CLUSTER_SH), "stop"], env=env, capture_output=True,
                           timeout=300)


def test_two_node_job_trains_checkpoints_and_resumes_on_one_node(slurm, tiny_data, tmp_path):
    batch = "train.global_batch_size=16"  # 2 nodes x 1 process x 8, or 1 x 1 x 8 x 2 micro-steps
    job = slurm.submit(tmp_path, *tiny_run(tiny_data, "train.max_steps=20", "train.log_every=5",
                                           "train.save_every=10", batch))
    log = assert_completed(slurm.wait(job, tmp_path, timeout=300), tmp_path, job)

    # One srun task, hence one torchrun, on each node of the two (one process each: no GPU)...
    assert "2 nodes (node[1-2]) x 1 processes" in log, log[-8000:]
    tasks = dict(re.findall(r"^node \S+: task (\d) of 2, node index (\d)$", log, re.M))
    assert tasks == {"0": "0", "1": "1"}, log[-8000:]
    run = tmp_path / "runs" / f"xmod-{job}"  # the script's default run_dir
    saved = run / "checkpoints" / "step_00000020"
    # ...and the two trained as one world: ZeRO-2 saved one optimizer shard per rank.
    assert len(list(saved.glob("zero_pp_rank_*_optim_states.pt"))) == 2, log[-8000:]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000020"
    assert (saved / "model.safetensors").is_file()
    train, valid = read_metrics(run)
    assert [r["step"] for r in train] == [1, 5, 10, 15, 20]  # a first line at step 1
    assert [r["step"] for r in valid] == [0, 20]
    assert log.count("valid @ step 20") == 1  # rank 0 alone reports
    # The same run resubmitted on one node goes on with two micro-steps a step.
    again = slurm.submit(tmp_path, *tiny_run(tiny_data, "train.max_steps=25", "train.log_every=5",
                                             batch, f"run_dir={run}"), nodes=1)
    log = assert_completed(slurm.wait(again, tmp_path, timeout=300), tmp_path, again)
    assert ("resuming step_00000020 written by 2 ranks under ZeRO-2 on 1 rank under ZeRO-2: "
            "optimizer state re-partitioned") in log, log[-8000:]
    assert [r["step"] for r in read_metrics(run)[0]][-2:] == [20, 25]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000025"


def test_usr1_checkpoints_requeues_and_resumes(slurm, tiny_data, tmp_path):
    """What Slurm does near the time limit (--signal=B:USR1@...), sent by hand after the first
    checkpoint: the trainer saves and stops, the job requeues itself and resumes to the end."""
    max_steps = 40  # the signal comes at step 10 or soon after
    job = slurm.submit(tmp_path, *tiny_run(tiny_data, f"train.max_steps={max_steps}",
                                           "train.log_every=10", "train.save_every=10"))
    run = tmp_path / "runs" / f"xmod-{job}"
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "latest").exists():
        state = slurm.job(job)["JobState"]
        assert state in {"PENDING", "CONFIGURING", "RUNNING"}, f"{state}\n{job_log(tmp_path, job)}"
        assert time.monotonic() < deadline, job_log(tmp_path, job)
        time.sleep(0.2)
    slurm.command("scancel", "--signal=USR1", "--batch", job)
    info = slurm.wait(job, tmp_path, timeout=300)
    log = assert_completed(info, tmp_path, job)

    assert info["Restarts"] == "1", log[-8000:]
    assert "USR1, checkpointing and requeueing" in log
    assert f"job {job}: requeued, not failed: the training processes saved a checkpoint" in log
    stopped = re.search(r"stopping on SIGTERM after step (\d+)", log)
    assert stopped and int(stopped[1]) < max_steps, log[-8000:]
    step = int(stopped[1])
    # run_dir is stored resolved: the message names runs/xmod-<job> under the job's directory.
    assert f"/runs/xmod-{job}/checkpoints/step_{step:08d} at step {step}" in log
    assert re.findall(rf"^job {job} \(restart (\d)\)", log, re.M) == ["0", "1"]
    # Training went on from the checkpoint: every log window once, to the end.
    train, _ = read_metrics(run)
    assert [r["step"] for r in train] == [1, *range(10, max_steps + 1, 10)]
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{max_steps:08d}"


def test_a_prepare_array_resubmitted_after_a_killed_task_equals_one_machine(slurm, tiny_corpus,
                                                                            tiny_data, tmp_path):
    """sbatch --array=0-1 slurm/prepare.sh: task 1 is killed (kill -9) while it encodes, the
    array is submitted again, and the folder is byte for byte one machine's preparation."""
    from data_prep.prepare import main as prepare_main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for text in tiny_corpus.glob("*.txt"):
        shutil.copy(text, corpus)
    # Task 1's first language (of de_DE, el_GR, en_XX, ru_RU it has el_GR and ru_RU) made long
    # enough (about 20 MB, a second or more of encoding) that the kill lands inside it.
    (corpus / "el_GR.txt").write_text((tiny_corpus / "el_GR.txt").read_text() * 120)
    args = ["--source", str(corpus), "--tokenizer", str(tiny_data / "sentencepiece.bpe.model"),
            "--valid-fraction", "0.1"]
    assert prepare_main([*args, "--out", str(tmp_path / "one"), "--workers", "1"]) == 0
    out = tmp_path / "data"
    (tmp_path / "logs").mkdir()

    def submit() -> str:
        return slurm.command("sbatch", "--parsable", "--array=0-1", f"--chdir={tmp_path}",
                             "--cpus-per-task=1", str(PREPARE_SH), *args, "--out",
                             str(out)).strip()

    job = submit()
    deadline = time.monotonic() + 120
    while not (partial := list((out / "el_GR").glob(".train.bin.tmp-*"))):  # task 1 encodes el_GR
        assert time.monotonic() < deadline, slurm.job(f"{job}_1")
        time.sleep(0.02)
    # The file names its writer, the task's process (the batch script execs it): killed at once,
    # as a lost node or the OOM killer would, not through slurmctld's round trip.
    os.kill(int(partial[0].name.rsplit("-", 1)[1]), signal.SIGKILL)
    states = {task: slurm.wait(f"{job}_{task}", tmp_path, timeout=120)["JobState"]
              for task in (0, 1)}
    assert states[0] == "COMPLETED" and states[1] != "COMPLETED", states
    assert not (out / "manifest.json").exists()
    assert not (out / "el_GR" / "done.json").exists()

    again = submit()
    for task in (0, 1):
        info = slurm.wait(f"{again}_{task}", tmp_path, timeout=120)
        assert info["JobState"] == "COMPLETED", prepare_log(tmp_path, again, task)
    assert "resuming: 2 of 2 language(s) done already" in prepare_log(tmp_path, again, 0)
    assert files_of(out) == files_of(tmp_path / "one")


def prepare_log(workdir: Path, job: str, task: int) -> str:
    path = workdir / "logs" / f"xmod-prepare-{job}_{task}.out"
    return path.read_text() if path.exists() else f"({path} not written)"


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}
