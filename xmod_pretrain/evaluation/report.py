"""Figures of a run: training curves from ``metrics.jsonl`` and the evaluation bar chart.

    xmod_pretrain report --from runs/demo

writes ``runs/demo/report/*.png`` and ``runs/demo/report/index.html``, a page that shows them
beside the latest evaluation table (``evaluation.json`` when ``xmod_pretrain evaluate`` wrote one,
else the last validation in ``metrics.jsonl``). Figures are drawn with matplotlib's object API
(no pyplot), so no display or global backend is involved.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from xmod_core.errors import UserError
from xmod_core.outputs import CONFIG_FILE, closest_folders
from xmod_pretrain.training.metrics import METRICS_FILE, perplexity, read_records

REPORT_DIR = "report"
DPI = 110
# A ratio of largest to smallest value beyond which a linear axis squashes the small ones.
LOG_RANGE = 20.0


class ReportError(UserError, ValueError):
    """A run without the metrics a report needs."""


# ---- colours and axes -------------------------------------------------------------------------

def language_colors(languages: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per language, the same in every figure: tab20's ten dark shades first,
    then its ten light ones, so the first ten languages are the most distinct."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return {lang: cmap(order[i % 20]) for i, lang in enumerate(sorted(languages))}


def _new_axes(title: str, xlabel: str, ylabel: str,
              size: tuple[float, float] = (9, 4.5)) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _legend_outside(ax: Axes, count: int) -> None:
    """A legend right of the axes, in columns of at most 20, so it never covers a curve."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              ncols=max(1, math.ceil(count / 20)))


def _wide_range(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) > LOG_RANGE


# ---- the evaluation chart ---------------------------------------------------------------------

def evaluation_chart(rows: Sequence[dict], title: str, path: Path) -> Path:
    """Horizontal bars of perplexity per row (``name``, ``ppl``, ``language``, ``modules``), log
    scale when the values span more than ``LOG_RANGE``; rows through another language's modules
    stand out in orange."""
    names = [row["name"] for row in rows]
    ppl = [row["ppl"] for row in rows]
    height = max(3.5, 1.2 + 0.32 * len(rows))  # inches: about 0.3 per bar
    fig, ax = _new_axes(title, "perplexity (lower is better)", "", size=(9, height))
    colors = ["tab:blue" if row["language"] == row["modules"] else "tab:orange" for row in rows]
    bars = ax.barh(names, ppl, color=colors)
    ax.invert_yaxis()  # first row on top, as in the printed table
    if _wide_range(ppl):
        ax.set_xscale("log")
    ax.bar_label(bars, labels=[f"{v:,.1f}" for v in ppl], padding=3, fontsize=8)
    ax.margins(x=0.15)  # room for the labels past the longest bar
    ax.grid(True, axis="x", alpha=0.3)
    ax.grid(False, axis="y")
    ax.title.set_fontsize(10)
    if "tab:orange" in colors:
        from matplotlib.patches import Patch

        # Below the axes: inside, it would cover the longest bar's label.
        fig.legend(handles=[Patch(color="tab:blue", label="own modules"),
                            Patch(color="tab:orange", label="another language's modules")],
                   loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.savefig(path)
    return path


# ---- training curves --------------------------------------------------------------------------

def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, valid, transfer) records of ``run_dir/metrics.jsonl``."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise ReportError(f"{path} does not exist: is {run_dir} a training run?")
    records = read_records(path)
    split = [[r for r in records if r.get("split") == name] for name in (None, "valid", "transfer")]
    return split[0], split[1], split[2]


def _scalar_figure(train: list[dict], key: str, title: str, ylabel: str, path: Path) -> Path:
    fig, ax = _new_axes(title, "step", ylabel)
    marker = "." if len(train) < 30 else None  # few points: show where they are
    ax.plot([r["step"] for r in train], [r[key] for r in train], marker=marker)
    ax.set_ylim(bottom=0)  # from zero, so a small dip does not look like a collapse
    if key == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    fig.savefig(path)
    return path


def loss_figure(train: list[dict], valid: list[dict], path: Path) -> Path:
    """Training loss per logging window, with the mean valid loss over languages beside it."""
    fig, ax = _new_axes("Masked-LM loss", "step", "loss (cross-entropy, nats)")
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train (window mean)")
    means = [sum(r["lang_loss"].values()) / len(r["lang_loss"]) for r in valid]
    ax.plot([r["step"] for r in valid], means, marker="o", label="valid (mean over languages)")
    ax.legend(loc="upper right")
    fig.savefig(path)
    return path


# Up to this many languages every one gets a colour and a legend entry; beyond it the figure
# shows the mean and the best and worst few in colour, and the rest as thin grey lines.
ALL_IN_COLOUR = 8
HIGHLIGHTED = 3


def language_figure(records: list[dict], title: str, path: Path, colors: dict[str, tuple]) -> Path:
    """Per-language loss of ``records[i]["lang_loss"]`` over steps, legend outside; with many
    languages, the mean and the best and worst ``HIGHLIGHTED`` (by last value) stand out."""
    fig, ax = _new_axes(title, "step", "loss (cross-entropy, nats)", size=(10, 5))
    series = {lang: [(r["step"], r["lang_loss"][lang]) for r in records if lang in r["lang_loss"]]
              for lang in sorted({lang for r in records for lang in r["lang_loss"]})}
    marker = "o" if len(records) < 30 else None
    shown = highlighted_languages(series)
    for lang, points in series.items():
        if lang in shown:
            ax.plot(*zip(*points), label=lang, color=colors[lang], marker=marker, markersize=3,
                    linewidth=1.4, zorder=3)
        else:
            ax.plot(*zip(*points), color="0.75", linewidth=0.7, zorder=1)
    if len(shown) < len(series):
        means = [(r["step"], sum(r["lang_loss"].values()) / len(r["lang_loss"]))
                 for r in records if r["lang_loss"]]
        ax.plot(*zip(*means), label=f"mean of {len(series)}", color="black", linewidth=2.2,
                zorder=4)
        ax.plot([], [], color="0.75", linewidth=0.7, label=f"{len(series) - len(shown)} others")
    _legend_outside(ax, len(shown) + 2)
    fig.savefig(path)
    return path


def highlighted_languages(series: dict[str, list[tuple[int, float]]]) -> list[str]:
    """Every language when few; else the best and the worst ``HIGHLIGHTED`` by last value."""
    if len(series) <= ALL_IN_COLOUR:
        return list(series)
    ranked = sorted(series, key=lambda lang: series[lang][-1][1])
    return ranked[:HIGHLIGHTED] + ranked[-HIGHLIGHTED:]


def training_figures(train: list[dict], valid: list[dict], out: Path) -> list[Path]:
    """The curves that have data: loss, per-language train and valid loss, lr, tokens/s."""
    languages = {lang for r in train + valid for lang in r["lang_loss"]}
    colors = language_colors(sorted(languages))
    paths = []
    if train or valid:
        paths.append(loss_figure(train, valid, out / "loss.png"))
    if train:
        paths += [
            language_figure(train, "Training loss per language (window mean; a language appears "
                            "when sampled)", out / "lang_loss.png", colors),
            _scalar_figure(train, "lr", "Learning rate", "learning rate", out / "lr.png"),
            _scalar_figure(train, "tokens_per_s", "Throughput", "tokens / s (all ranks)",
                           out / "tokens_per_s.png"),
        ]
    if valid:
        paths.append(language_figure(valid, "Validation loss per language", out / "valid_loss.png",
                                     colors))
    return paths


# ---- the page ---------------------------------------------------------------------------------

def latest_table(run_dir: Path, valid: list[dict]) -> tuple[str, list[dict]]:
    """(caption, rows of name/loss/ppl) of the newest evaluation: evaluation.json, else the last
    validation record."""
    path = run_dir / "evaluation.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        caption = (f"xmod_pretrain evaluate, step {saved['step']}: {saved['draws']} mask draw(s) x "
                   f"{saved['batches']} batch(es)")
        return caption, saved["rows"]
    if not valid:
        return "no evaluation or validation yet", []
    last = valid[-1]
    rows = [{"name": lang, "loss": loss, "ppl": perplexity(loss)}
            for lang, loss in last["lang_loss"].items()]
    return f"validation at step {last['step']} (metrics.jsonl)", rows


def _table_html(rows: list[dict]) -> str:
    body = "".join(f"<tr><td>{html.escape(r['name'])}</td><td>{r['loss']:.4f}</td>"
                   f"<td>{r['ppl']:,.2f}</td></tr>" for r in rows)
    if rows:
        mean = sum(r["loss"] for r in rows) / len(rows)
        body += (f"<tr><th>mean of {len(rows)}</th><th>{mean:.4f}</th>"
                 f"<th>{perplexity(mean):,.2f}</th></tr>")
    return f"<table><tr><th>language</th><th>loss</th><th>perplexity</th></tr>{body}</table>"


# What each figure shows, under it on the page.
CAPTIONS = {
    "evaluation": "Per-language loss of the latest evaluation (xmod_pretrain evaluate).",
    "loss": "Training loss (window means) and the mean validation loss over languages.",
    "lang_loss": "Training loss per language, the mean of each log window where it was sampled.",
    "lr": "Learning rate per step: the linear warmup, then the decay.",
    "tokens_per_s": "Training throughput over all ranks, per log window.",
    "valid_loss": "Validation loss per language at each validation.",
}


def run_summary(run_dir: Path, train: list[dict]) -> list[tuple[str, str]]:
    """(label, value) rows of what the run is: model, parameters, languages, steps, time, tokens."""
    from xmod_pretrain.model.xmod import count_parameters
    from xmod_pretrain.runs.records import load_config

    rows = []
    config_file = run_dir / CONFIG_FILE
    if config_file.is_file():
        cfg = load_config(config_file)
        model, train_cfg = cfg.model, cfg.train
        rows += [
            ("kind", cfg.recipe.value),
            ("model", f"{model.num_hidden_layers} layers, hidden {model.hidden_size}, vocabulary "
                      f"{model.vocab_size:,}, {'pre' if model.pre_norm else 'post'}-norm"),
            ("batch", f"{train_cfg.micro_batch_size} x {cfg.data.seq_len} tokens x "
                      f"{train_cfg.grad_accum_steps} accumulation per rank, "
                      f"{train_cfg.precision.value}, ZeRO-{cfg.deepspeed.zero_stage}"),
            ("languages", f"{len(model.languages)}: {', '.join(model.languages)}"),
        ]
        if model.vocab_size:
            total, active = count_parameters(model)
            rows.append(("parameters", f"{total / 1e6:.1f}M, {active / 1e6:.1f}M active per "
                                       "language"))
        rows.append(("steps", f"{train[-1]['step'] if train else 0} of {train_cfg.max_steps}"))
    if train:
        last = train[-1]
        if "wall_s" in last:
            rows.append(("training time", f"{last['wall_s'] / 60:.1f} min (this start)"))
        rows.append(("tokens seen", f"{last['tokens_seen']:,}"))
    return rows


def _summary_html(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td style='text-align:left'>"
                   f"{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>Run</h2><table>{body}</table>" if rows else ""


def _transfer_html(transfer: list[dict]) -> str:
    if not transfer:
        return ""
    items = "".join(
        f"<li>{html.escape(t['language'])}: perplexity {perplexity(t['own']):,.2f} with its own "
        f"modules, {perplexity(t['via'][t['best_existing']]):,.2f} through "
        f"{html.escape(t['best_existing'])}'s (the best existing)</li>" for t in transfer)
    return f"<h2>Added languages</h2><ul>{items}</ul>"


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;"
         "text-align:right}td:first-child,th:first-child{text-align:left}"
         "img{max-width:100%;display:block;margin:1em 0}")


def write_page(run_dir: Path, figures: list[Path], caption: str, rows: list[dict],
               transfer: list[dict], summary: list[tuple[str, str]], out: Path) -> Path:
    """``index.html``: what the run is, the table, then every figure with its caption."""
    title = f"Run report: {html.escape(str(run_dir))}"
    images = "".join(f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                     f"<figcaption>{html.escape(CAPTIONS.get(p.stem, p.stem))}</figcaption>"
                     "</figure>" for p in figures)
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1>{_summary_html(summary)}"
            f"<h2>Latest evaluation</h2><p>{html.escape(caption)}</p>{_table_html(rows)}"
            f"{_transfer_html(transfer)}<h2>Figures</h2>{images}</body></html>\n")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report/`` (figures and index.html); return the page's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist{closest_folders(run_dir)}")
    train, valid, transfer = read_metrics(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    figures = training_figures(train, valid, out)
    if (run_dir / "evaluation.png").is_file():  # copied, so the folder stands on its own
        figures.insert(0, Path(shutil.copyfile(run_dir / "evaluation.png", out / "evaluation.png")))
    caption, rows = latest_table(run_dir, valid)
    return write_page(run_dir, figures, caption, rows, transfer, run_summary(run_dir, train), out)


def main(argv: Sequence[str]) -> int:
    """``xmod_pretrain report``; returns the exit status (1 when the run has no metrics)."""
    parser = argparse.ArgumentParser(
        prog="xmod_pretrain report",
        description="Training curves and the latest evaluation of a run: PNGs and one HTML page.")
    parser.add_argument("--from", dest="run", required=True, help="run directory")
    args = parser.parse_args(argv)
    try:
        page = build_report(args.run)
    except UserError as err:  # the run's metrics, its config, its checkpoint
        print(f"xmod_pretrain report: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {page} and its figures")
    return 0
