"""``xmod_pretrain transfer`` on a real tiny run: frozen weights stay bit-identical, the
checkpoint is chosen on source dev, the export loads in transformers with equal logits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_LANGUAGES
from tests.integration.launch import run_training
from tests.xnli_folder import XNLI_LABELS, write_xnli_folder
from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.inference import encode_padded
from xmod_pretrain.recipes.transfer import choose_checkpoint, load_classifier
from xmod_pretrain.runs import open_run
from xmod_pretrain.transfer.tasks import GUIDE_TOPIC, load_task

pytestmark = pytest.mark.integration
TARGETS = [lang for lang in TINY_LANGUAGES if lang != "en_XX"]


def transfer(*argv: str, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone",
                                      f"--nproc_per_node={nproc}"]
    return subprocess.run([sys.executable, *launcher, "-m", "xmod_pretrain", "transfer", *argv],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def pretrained(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("transfer") / "run"
    run_training(run_dir, tiny_data, "train.max_steps=4", "train.save_every=4")
    return run_dir


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
    after = load_file(str(open_run(seed_run).path / "model.safetensors"))
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
])
def test_bad_requests_exit_non_zero_naming_the_problem(pretrained, tmp_path, args, named):
    proc = transfer("--from", str(pretrained), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 1 and named in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
