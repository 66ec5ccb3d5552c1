"""The transfer table: seeds aggregated, baselines beside the model, written as JSON, CSV, PNG.

A row is one language's test split scored one way: through its own modules, through the source
language's (the ablation), or by a baseline (bag-of-ids, the majority class). ``accuracy`` is
the mean over seeds, ``std`` their standard deviation (0 with one seed), ``ci95`` Wilson's
interval of the mean over the n test examples.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from xmod_core.atomic import atomic_path, write_text
from xmod_pretrain.recipes.transfer.scoring import wilson_interval

SUMMARY = "transfer"  # transfer.json, transfer.csv, transfer.png in the output folder
COLUMNS = ("language", "scored_by", "accuracy", "std", "ci_low", "ci_high", "seeds", "n")


def aggregate(seed_results: list[dict]) -> list[dict]:
    """One row per (language, modules) over the seeds' rows."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for result in seed_results:
        for row in result["rows"]:
            groups.setdefault((row["language"], row["modules"]), []).append(row)
    rows = []
    for (language, modules), found in groups.items():
        values = [r["accuracy"] for r in found]
        mean, n = statistics.fmean(values), found[0]["n"]
        scored_by = "own modules" if modules == language else f"{modules} modules"
        rows.append({"language": language, "scored_by": scored_by, "accuracy": mean,
                     "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "ci95": list(wilson_interval(mean, n)), "seeds": len(values), "n": n})
    return rows


def baseline_row(language: str, name: str, accuracy: float, n: int) -> dict:
    return {"language": language, "scored_by": name, "accuracy": accuracy, "std": 0.0,
            "ci95": list(wilson_interval(accuracy, n)), "seeds": 0, "n": n}


def accuracy_table(rows: list[dict], title: str, columns: list[str]) -> str:
    """Languages down, ways of scoring across: ``0.612 ±0.010 [0.55,0.67]``; a mean row last."""
    cell = {(r["language"], r["scored_by"]): r for r in rows}
    languages = list(dict.fromkeys(r["language"] for r in rows))

    def shown(row: dict | None) -> str:
        if row is None:
            return "-"
        spread = f" ±{row['std']:.3f}" if row["seeds"] > 1 else ""
        low, high = row["ci95"]
        return f"{row['accuracy']:.3f}{spread} [{low:.2f},{high:.2f}]"

    width = 2 + max(len(text) for text in [*columns, *map(shown, rows)])
    lines = [title, "  language  " + "".join(f"{c:<{width}}" for c in columns) + "n"]

    for lang in languages:
        n = next(r["n"] for r in rows if r["language"] == lang)
        lines.append(f"  {lang:<10}" + "".join(f"{shown(cell.get((lang, c))):<{width}}"
                                               for c in columns) + f"{n}")
    means = []
    for c in columns:
        values = [r["accuracy"] for r in rows if r["scored_by"] == c]
        means.append(f"{statistics.fmean(values):.3f}" if values else "-")
    lines.append(f"  {'mean':<10}" + "".join(f"{m:<{width}}" for m in means))
    return "\n".join(lines)


def write_summary(out_dir: Path, meta: dict, rows: list[dict], columns: list[str],
                  chance: float) -> list[Path]:
    """transfer.json (meta + rows), transfer.csv, and transfer.png (per language, each way of
    scoring, with its interval, and the chance line)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{SUMMARY}.{ext}" for ext in ("json", "csv", "png")]
    write_text(paths[0], json.dumps({**meta, "chance": chance, "rows": rows}, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r["language"], r["scored_by"], f"{r['accuracy']:.6f}", f"{r['std']:.6f}",
                         f"{r['ci95'][0]:.6f}", f"{r['ci95'][1]:.6f}", r["seeds"], r["n"]])
    write_text(paths[1], buffer.getvalue())
    plot(paths[2], meta, rows, columns, chance)
    return paths


def plot(path: Path, meta: dict, rows: list[dict], columns: list[str], chance: float) -> None:
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display

    languages = list(dict.fromkeys(r["language"] for r in rows))
    cell = {(r["language"], r["scored_by"]): r for r in rows}
    fig = Figure(figsize=(max(6.0, 0.55 * len(languages) + 2), 3.8))
    ax = fig.subplots()
    width = 0.8 / len(columns)
    for k, column in enumerate(columns):
        xs, ys, errs = [], [], [[], []]
        for i, lang in enumerate(languages):
            row = cell.get((lang, column))
            if row is not None:
                xs.append(i + (k - (len(columns) - 1) / 2) * width)
                ys.append(row["accuracy"])
                errs[0].append(row["accuracy"] - row["ci95"][0])
                errs[1].append(row["ci95"][1] - row["accuracy"])
        ax.bar(xs, ys, width, yerr=errs, capsize=1.5, label=column)
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance {chance:.3f}")
    ax.set_xticks(range(len(languages)), languages, rotation=60, fontsize=8)
    ax.set_ylabel(meta.get("metric", "accuracy"))
    ax.set_ylim(0, 1)
    ax.set_title(f"{meta['task']}: {meta['model']}, source {meta['source']}", fontsize=9)
    ax.legend(fontsize=7, ncol=len(columns) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.28))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
