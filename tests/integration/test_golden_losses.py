"""Golden losses: the first training losses of fixed-seed runs, stored in the repository.

A change that moves them (a refactor that reorders initialisation, masking, sampling or the
optimizer step) fails here unless the file is regenerated on purpose, and the commit that
regenerates it says why. Three runs, each the real CLI on real text: the demo recipe (its
optimizer, schedule and masking) with the tests' tiny model on the tiny corpus cut from the
bundled one, the same on 2 ranks under ZeRO-2 with per-rank languages, and an add-language run
grown from the first. The tiny model runs every code path the demo model does, in a fifth of
the time.

Regenerate (and commit the diff with the reason): ``XMOD_WRITE_GOLDEN=1 python -m pytest
tests/integration/test_golden_losses.py``.

The comparison allows a relative difference of 1e-6: what fp32 rounding on another CPU's kernels
may move, far below what a changed computation moves (the losses of two seeds differ by 1e-2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.launch import TINY_MODEL, read_metrics, run_training

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "losses.json"
STEPS = 20
# One thread, so reductions keep one order.
DEMO = [*TINY_MODEL, "train.log_every=1", "train.eval_every=0", "train.save_every=0",
        "train.eval_batches=1", "train.threads=1", "optim.warmup_steps=5"]
WRITE = os.environ.get("XMOD_WRITE_GOLDEN") == "1"


def losses(run: Path) -> list[float]:
    train, _ = read_metrics(run)
    return [record["loss"] for record in train]


def demo(run: Path, data: Path, *overrides: str, nproc: int = 1) -> list[float]:
    run_training(run, data, f"train.max_steps={STEPS}", *DEMO, *overrides, nproc=nproc, model=[],
                 own_process=True)  # the CLI as a user starts it, nothing of earlier tests
    return losses(run)


@pytest.fixture(scope="module")
def measured(tiny_data, tmp_path_factory) -> dict[str, list[float]]:
    root = tmp_path_factory.mktemp("golden")
    runs = {"demo": demo(root / "demo", tiny_data)}
    runs["zero2_two_ranks"] = demo(root / "zero2", tiny_data, "deepspeed=zero2", nproc=2)
    grown = root / "grown"
    from tests.support.commands import add_language

    add_language("--lang", "yo_NG", "--from", str(root / "demo"), "--out", str(grown),
                 "--steps", str(STEPS), "train.log_every=1", "train.eval_every=0",
                 "train.eval_batches=1", "train.threads=1")
    runs["add_language"] = losses(grown)
    if WRITE:
        GOLDEN.write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    return runs


@pytest.mark.parametrize("name", ["demo", "zero2_two_ranks", "add_language"])
def test_losses_match_the_golden_file(measured, name):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))[name]
    assert len(measured[name]) == STEPS
    assert measured[name] == pytest.approx(golden, rel=1e-6, abs=0), (
        f"{name}: the first {STEPS} losses moved; if on purpose, regenerate {GOLDEN.name} "
        "(module docstring) and say why in the commit")
