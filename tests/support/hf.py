"""UDHR text, export through the CLI and the logits check that the export and vocabulary tests
share."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest
import torch
import transformers

from xmod_pretrain.cli import main as cli_main
from xmod_pretrain.runs.inference import RunModel

UDHR = Path(__file__).resolve().parents[2] / "data_prep" / "corpus" / "udhr"


def udhr_lines(lang: str, n: int) -> list[str]:
    with lzma.open(UDHR / f"{lang}.txt.xz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def export_with_cli(run: Path, out: Path, *extra: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["export", "--from", str(run), "--out", str(out), *extra])
    assert exit_.value.code == 0


def assert_same_logits(ours: RunModel, hf: transformers.XmodForMaskedLM, ids: torch.Tensor,
                       mask: torch.Tensor | None = None) -> float:
    """Logits of every language agree to 1e-5; return the largest difference seen."""
    worst = 0.0
    for index, lang in enumerate(ours.languages):
        with torch.no_grad():
            got = ours(ids, lang, attention_mask=mask)
            expected = hf(ids, attention_mask=mask, lang_ids=torch.full((len(ids),), index)).logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        worst = max(worst, (got - expected).abs().max().item())
    return worst
