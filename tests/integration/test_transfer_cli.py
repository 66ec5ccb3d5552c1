"""``xmod_pretrain transfer`` on a real tiny run: frozen weights stay bit-identical, the
checkpoint is chosen on source dev, the export loads in transformers with equal logits; Ctrl-C
saves and stops, a changed task is refused, an unreadable data file is named."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_LANGUAGES
from tests.support.launch import TINY_PEAK_TFLOPS, cli_here, tree_hash
from tests.xnli_folder import XNLI_LABELS, write_xnli_folder
from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.recipes.transfer.recipe import choose_checkpoint, load_classifier
from xmod_pretrain.recipes.transfer.tasks import GUIDE_TOPIC, load_task
from xmod_pretrain.runs.inference import encode_padded
from xmod_pretrain.runs.records import open_run

pytestmark = pytest.mark.integration
TARGETS = [lang for lang in TINY_LANGUAGES if lang != "en_XX"]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
TRANSFER = [sys.executable, "-m", "xmod_pretrain", "transfer"]


def transfer(*argv: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone",
                                      f"--nproc_per_node={nproc}"]
    return subprocess.run([TRANSFER[0], *launcher, *TRANSFER[1:], *argv],
                          capture_output=True, text=True, timeout=600, env=ENV)


@pytest.fixture(scope="module")
def pretrained(run_4_steps):
    """The shared 4-step run with its one checkpoint (tests/support/runs.py); transfer only
    reads it."""
    return run_4_steps


@pytest.fixture(scope="module")
def transferred(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer") / "out"
    proc = transfer("--from", str(pretrained), "--task", GUIDE_TOPIC, "--targets", *TARGETS,
                    "--steps", "6", "--epochs", "3", "--seeds", "1", "--out", str(out),
                    "--export", str(out / "hf"), "train.micro_batch_size=8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_table_and_files(transferred):
    out, stdout = transferred
    assert "own modules" in stdout and "bag-of-ids" in stdout and "majority class" in stdout
    summary = json.loads((out / "transfer.json").read_text())
    languages = {r["language"] for r in summary["rows"]}
    assert languages == {"en_XX", *TARGETS}
    assert (out / "transfer.csv").is_file() and (out / "transfer.png").stat().st_size > 1000


def test_the_checkpoint_is_chosen_on_source_dev(transferred):
    out, _ = transferred
    seed = json.loads((out / "seed1" / "transfer.json").read_text())
    assert set(seed["dev"]) == {"2", "4", "6"}  # a checkpoint per epoch, each scored on dev
    assert seed["chosen_step"] == choose_checkpoint({int(k): v for k, v in seed["dev"].items()})


def assert_only_the_unfrozen_trained(pretrained, seed_run):
    before = open_run(pretrained).weights()
    after = open_run(seed_run).weights()
    frozen = [k for k in after if k.startswith("roberta.embeddings.") or ".adapter_modules." in k]
    trained = [k for k in after if k.startswith("roberta.") and k not in frozen]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
    assert any(not torch.equal(after[k], before[k]) for k in trained)


def test_frozen_weights_are_bit_identical_and_the_rest_trained(pretrained, transferred):
    assert_only_the_unfrozen_trained(pretrained, transferred[0] / "seed1")


def test_an_hf_task_on_two_ranks_under_zero3(pretrained, tmp_path):
    """A local datasets folder in XNLI's layout (sentence pairs, class labels), fine-tuned by
    torchrun on 2 ranks with ZeRO-3: the frozen weights still do not move by a bit."""
    xnli = write_xnli_folder(tmp_path / "xnli", {"en": "en_XX", "de": "de_DE"})
    out = tmp_path / "out"
    proc = transfer("--from", str(pretrained), "--task", f"hf:{xnli}", "--steps", "4",
                    "--epochs", "2", "--seeds", "1", "--out", str(out), "deepspeed=zero3",
                    "train.micro_batch_size=4", nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = re.search(r"optimizer: ([\d,]+) trainable parameters of ([\d,]+)", proc.stdout)
    trainable, total = (int(g.replace(",", "")) for g in counts.groups())
    assert 0 < trainable < total  # ZeRO-3 partitions: the total counts the full parameters
    summary = json.loads((out / "transfer.json").read_text())
    assert summary["labels"] == XNLI_LABELS
    assert {r["language"] for r in summary["rows"]} == {"en_XX", "de_DE"}
    assert_only_the_unfrozen_trained(pretrained, out / "seed1")


def test_the_export_loads_in_transformers_with_our_logits(transferred):
    transformers = pytest.importorskip("transformers")
    out, _ = transferred
    seed = json.loads((out / "seed1" / "transfer.json").read_text())
    ours = load_classifier(open_run(out / "seed1", seed["chosen_step"]))
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(out / "hf").eval()
    assert theirs.config.id2label[0] == seed["labels"][0]
    task = load_task(GUIDE_TOPIC, "en_XX")
    tokenizer = Tokenizer.from_file(open_run(out / "seed1").tokenizer)
    for lang in TARGETS:
        ids, mask = encode_padded(tokenizer, [e.text for e in task.test[lang][:4]], 64)
        index = ours.languages.index(lang)
        with torch.no_grad():
            expected = theirs(input_ids=ids, attention_mask=mask,
                              lang_ids=torch.full((len(ids),), index)).logits
            torch.testing.assert_close(ours(ids, index, mask).logits, expected,
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args, named", [
    (["--task", "no-such-task"], "neither a bundled task"),
    (["--task", GUIDE_TOPIC, "--targets", "fi_FI"], "no test data for fi_FI"),
    (["--task", GUIDE_TOPIC, "--targets", "ja_XX"], "has no modules for ja_XX"),
    (["--task", GUIDE_TOPIC, "train.max_step=3"],
     "unknown config key(s) train.max_step (did you mean train.max_steps?)"),
])
def test_bad_requests_exit_non_zero_naming_the_problem(pretrained, tmp_path, args, named):
    proc = cli_here("transfer", "--from", str(pretrained), "--out", str(tmp_path / "out"),
                    *args)
    assert proc.returncode == 1 and named in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# ---- a stop, a changed task, a seed never evaluated ---------------------------------------


def labelled_task(root: Path, labels: str = "ab") -> Path:
    """A small task folder of real text (guide-topic lines) whose labels cycle through
    ``labels``: ``"ba"`` relabels every example and keeps the label set."""
    topic = load_task(GUIDE_TOPIC, "en_XX")
    files = {"train/en_XX.jsonl": topic.train[:32], "dev/en_XX.jsonl": topic.dev[:8],
             "test/en_XX.jsonl": topic.test["en_XX"][:8],
             "test/de_DE.jsonl": topic.test["de_DE"][:8]}
    for name, examples in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(
            json.dumps({"text": e.text, "label": labels[i % len(labels)]}) + "\n"
            for i, e in enumerate(examples)), encoding="utf-8")
    return root


@dataclass
class Stopped:
    task: Path
    out: Path
    args: list[str]   # the command's arguments, the same for every start
    returncode: int
    stdout: str
    stderr: str
    seed2_started: bool  # by the stopped command
    resumed: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def stopped(pretrained, tmp_path_factory):
    """Two seeds of 10 steps, SIGINT to the command's process group (as a terminal's Ctrl-C)
    once the first step is logged, then the same command again."""
    root = tmp_path_factory.mktemp("stopped")
    task, out = labelled_task(root / "task"), root / "out"
    args = ["--from", str(pretrained), "--task", str(task), "--out", str(out), "--steps", "10",
            "--epochs", "1", "--seeds", "2", "train.log_every=1",
            f"train.peak_tflops={TINY_PEAK_TFLOPS}"]
    logs = [root / "stdout", root / "stderr"]
    with logs[0].open("w") as stdout, logs[1].open("w") as stderr:  # files: no pipe fills up
        proc = subprocess.Popen([*TRANSFER, *args], stdout=stdout, stderr=stderr, env=ENV,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while not re.search(r"step +1/10 \|", logs[0].read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, logs[1].read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        returncode = proc.wait(300)
    printed = [log.read_text() for log in logs]
    return Stopped(task, out, args, returncode, *printed, (out / "seed2").exists(),
                   resumed=transfer(*args))


def test_ctrl_c_saves_starts_no_later_seed_and_the_same_command_finishes(stopped):
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    step = int(re.search(r"stopping on SIGINT after step (\d+); the same command resumes from "
                         "the checkpoint", stopped.stdout)[1])
    assert step < 10
    assert stopped.stdout.rstrip().endswith(
        "transfer: seed 1 of 2 stopped before its last step; the same command resumes it, "
        "runs seed 2 and writes the summary")
    assert not stopped.seed2_started
    resumed = stopped.resumed
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"at step {step}" in resumed.stdout
    summary = json.loads((stopped.out / "transfer.json").read_text())
    assert summary["seeds"] == 2 and summary["chosen_steps"] == [10, 10]
    # The stop's checkpoint stays, but the choice is among the epochs' (here the one, step 10).
    seed1 = json.loads((stopped.out / "seed1" / "transfer.json").read_text())
    assert (stopped.out / "seed1" / "checkpoints" / f"step_{step:08d}").is_dir()
    assert list(seed1["dev"]) == ["10"]


def test_a_changed_task_is_refused_naming_both_hashes(stopped):
    was = json.loads((stopped.out / "transfer.json").read_text())["content_hash"]
    before = tree_hash(stopped.out)
    labelled_task(stopped.task, "ba")
    try:
        now = load_task(str(stopped.task), "en_XX").content_hash
        began = time.monotonic()
        proc = transfer(*stopped.args)
        took = time.monotonic() - began
    finally:
        labelled_task(stopped.task)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"xmod_pretrain: error: {stopped.out / 'seed1'} was trained on task {stopped.task} with "
        f"content hash {was[:12]}, but the task now hashes {now[:12]} (its files or revision "
        "changed): train it into a new --out, or restore the task to resume this one")
    assert "building the model" not in proc.stdout and took < 60  # refused before DeepSpeed
    assert tree_hash(stopped.out) == before


def test_a_seed_never_evaluated_is_evaluated_by_the_next_start(stopped):
    """What a kill, or a second Ctrl-C, during a seed's evaluation leaves: its last checkpoint
    and no result."""
    for result in (stopped.out / "seed2" / "transfer.json", stopped.out / "transfer.json"):
        result.unlink()
    proc = transfer(*stopped.args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "chose step 10 (source dev accuracy" in proc.stdout
    assert (stopped.out / "seed2" / "transfer.json").is_file()
    assert json.loads((stopped.out / "transfer.json").read_text())["seeds"] == 2


def test_garbage_parquet_in_an_hf_folder_is_one_line_naming_the_file(pretrained, tmp_path):
    xnli = write_xnli_folder(tmp_path / "xnli", {"en": "en_XX", "de": "de_DE"})
    garbage = xnli / "de" / "test-00000-of-00001.parquet"
    garbage.write_bytes(b"not parquet\n" * 64)
    proc = transfer("--from", str(pretrained), "--task", f"hf:{xnli}", "--out",
                    str(tmp_path / "out"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"xmod_pretrain: error: hf:{xnli}: cannot load config 'de': {garbage} (test split) is "
        "not a readable parquet file (")
    assert not (tmp_path / "out").exists()
