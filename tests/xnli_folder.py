"""A local ``datasets`` folder laid out as XNLI on the hub (``facebook/xnli``): a config per
language, each with train, validation and test parquet files of premise, hypothesis and a
class label, declared in the README's ``configs`` metadata as the hub's copy declares them."""

from __future__ import annotations

from pathlib import Path

from xmod_pretrain.recipes.transfer.tasks import GUIDE_TOPIC, load_task

XNLI_LABELS = ["entailment", "neutral", "contradiction"]
SPLITS = ("train", "validation", "test")
ROWS_PER_SPLIT = 24


def xnli_rows(lang: str, split: str, count: int = ROWS_PER_SPLIT) -> dict[str, list]:
    """The first ``count`` pairs of a split: real text (consecutive held-out guide-topic lines
    of ``lang``, other lines for each split) with labels that cycle through XNLI's three; what
    matters is the format."""
    start = SPLITS.index(split) * ROWS_PER_SPLIT
    lines = [e.text for e in load_task(GUIDE_TOPIC, "en_XX").test[lang]][start: start + count + 1]
    return {"premise": lines[:count], "hypothesis": lines[1: count + 1],
            "label": [i % len(XNLI_LABELS) for i in range(count)]}


def write_xnli_folder(root: Path, configs: dict[str, str]) -> Path:
    """``configs``: XNLI config name (``en``) -> bundled language whose text fills it."""
    import datasets

    features = datasets.Features({"premise": datasets.Value("string"),
                                  "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=XNLI_LABELS)})
    yaml = ["---", "configs:"]
    for config, lang in configs.items():
        yaml.append(f"- config_name: {config}\n  data_files:")
        for split in SPLITS:
            rows = xnli_rows(lang, split)
            path = root / config / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
            yaml.append(f"  - split: {split}\n    path: {config}/{split}-*")
    (root / "README.md").write_text("\n".join(yaml + ["---", "A local XNLI-format copy."]) + "\n",
                                    encoding="utf-8")
    return root
