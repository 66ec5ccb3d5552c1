"""Masked-LM evaluation, shared by the trainer's validation and ``xmod_pretrain evaluate``.

``masked_lm_loss`` is the one place a loss over valid batches is computed: the trainer calls it
through its DeepSpeed engine, the ``evaluate`` command through a plain ``XmodForMaskedLM`` loaded
from a checkpoint. Masking is deterministic: draw k of a language masks with seed ``seed + k``, so
draw 0 is exactly the batches the trainer validates on, and more draws only add masks.

    xmod_pretrain evaluate --from runs/demo
    xmod_pretrain evaluate --from runs/demo+yo_NG --adapter-of yo_NG=vi_VN
    xmod_pretrain evaluate --from runs/demo --text de_DE=my_german.txt --draws 5
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from xmod_core.errors import UserError
from xmod_core.languages import other_form_hint
from xmod_core.outputs import CHECKPOINTS, CONFIG_FILE, check_not_inside_run
from xmod_core.shards import (
    MANIFEST,
    TOKENIZER_FILE,
    check_run_tokenizer,
    is_prepared,
    read_manifest,
)
from xmod_pretrain.config import Config
from xmod_pretrain.data.masking import Masker, MicroBatch
from xmod_pretrain.data.prepared import ensure_prepared
from xmod_pretrain.data.sampler import validation_batches
from xmod_pretrain.data.shards import ShardSet
from xmod_pretrain.runs.records import RunCheckpoint, load_config, open_run
from xmod_pretrain.training.metrics import perplexity
from xmod_pretrain.vocabulary.pieces import read_model

Forward = Callable[[MicroBatch], torch.Tensor]
"""Runs one micro-batch and returns its mean cross-entropy over the masked targets (a scalar)."""

# ``prepare`` holds out at least one line for training; this keeps all but a line in 1000 of a
# user's text in the evaluated (valid) split.
TEXT_VALID_FRACTION = 0.999
OUTPUT_NAMES = ("evaluation.json", "evaluation.csv", "evaluation.png")


class EvaluationError(UserError, ValueError):
    """An evaluation that cannot run as asked (unknown language, no data, unusable text)."""


@torch.no_grad()
def masked_lm_loss(forward: Forward, batches: Sequence[MicroBatch],
                   through: int | None = None) -> float:
    """Token-weighted masked-LM loss of ``batches``: every masked target counts once, whichever
    batch holds it. With ``through``, each batch runs through the modules of that language index
    instead of its own (zero-shot transfer)."""
    total, count = 0.0, 0
    for batch in batches:
        if through is not None:
            batch = dataclasses.replace(batch, lang=through)
        n = batch.count
        total += float(forward(batch)) * n  # the forward returns the mean over these n targets
        count += n
    return total / count


def draw_batches(shards: ShardSet, lang: int, lang_id: int, masker: Masker, batch_size: int,
                 seq_len: int, num_batches: int, seed: int, draws: int) -> list[MicroBatch]:
    """The valid batches of shard language ``lang`` masked ``draws`` times (draw k with seed
    ``seed + k``), one list: ``masked_lm_loss`` over it averages the draws, token-weighted."""
    return [batch for k in range(draws)
            for batch in validation_batches(shards, lang, lang_id, masker, batch_size, seq_len,
                                            num_batches, seed + k)]


@dataclass
class Row:
    """One line of an evaluation: a language's text through one language's modules."""

    language: str
    modules: str
    loss: float
    targets: int
    data: str

    @property
    def name(self) -> str:
        own = self.modules == self.language
        return self.language if own else f"{self.language} via {self.modules}"

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)


@dataclass
class Evaluation:
    """Every row of one checkpoint's evaluation, with how it was measured."""

    run_dir: str
    checkpoint: str
    step: int
    draws: int
    batches: int
    seed: int
    rows: list[Row]
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    """Run languages left out, each with why (no valid text where the run's data is)."""

    def title(self) -> str:
        return (f"{self.run_dir} @ step {self.step}: masked-LM evaluation, {self.draws} mask "
                f"draw(s) x {self.batches} batch(es)")


# ---- where a run's valid text is -------------------------------------------------------------

@dataclass
class Source:
    """Prepared shards holding a language's valid split; ``order`` is the shard language order
    the trainer used, on which the fixed masking seed depends. ``vocab_size`` is that of the
    tokenizer that encoded them: random replacements are drawn from its ids."""

    data_dir: Path
    order: list[str]
    vocab_size: int

    def shards(self) -> ShardSet:
        return ShardSet(self.data_dir, "valid", self.order)


@dataclass
class DataDir:
    """A data folder a run trained on: its own, or that of a run it grew from."""

    path: Path
    chosen: list[str]
    """The run's ``data.languages`` (empty: every language of the folder)."""
    run_dir: str


@dataclass
class Sources:
    """Where each language's valid text is, and why the others have none."""

    found: dict[str, Source]
    held: dict[str, str]
    """Languages whose text a data folder holds but that cannot be read from it, with why."""
    searched: list[Path]

    def why_not(self, lang: str) -> str:
        """Why ``lang`` has no valid text here."""
        return self.held.get(lang, f"no valid text for it in {', '.join(map(str, self.searched))}")


def run_sources(run: RunCheckpoint) -> Sources:
    """Each run language's valid shards: the run's ``data.dir`` first, then, for languages added
    post-hoc, the data of the run it grew from (and so on), where encoded with the run's ids
    (``uses_run_ids``). The run's own data encoded otherwise is refused (TokenizerMismatchError).
    A folder that holds a language it cannot give says why (``Sources.why_not``)."""
    found: dict[str, Source] = {}
    held: dict[str, str] = {}  # language -> why a folder holding its text was not used
    shared = run.config.data.shared_module  # every data language has text, through that module
    dirs = _data_dirs(run.config)
    for depth, data in enumerate(dirs):
        if not is_prepared(data.path):
            continue
        manifest = read_manifest(data.path)
        if not uses_run_ids(run, data.path, manifest):
            if depth == 0:
                check_run_tokenizer(run.tokenizer, data.path)  # refused, naming both tokenizers
            for lang in manifest["languages"]:
                held.setdefault(lang, f"{data.path} holds its text, encoded with another "
                                      "tokenizer than the run's (prepared again since?)")
            continue
        order = data.chosen or list(manifest["languages"])
        source = Source(data.path, [lang for lang in order if shared or lang in run.languages],
                        manifest["tokenizer"]["vocab_size"])
        found.update({lang: source for lang in source.order if lang not in found})
        for lang in manifest["languages"]:
            if lang not in order:
                held.setdefault(lang, f"it is not in data.languages of {data.run_dir} "
                                      f"({', '.join(order)}), though {data.path} holds its text")
    return Sources(found, held, [data.path for data in dirs])


def uses_run_ids(run: RunCheckpoint, data_dir: Path, manifest: dict) -> bool:
    """Whether ``data_dir``'s shards mean to ``run``'s model what they meant when encoded: they
    were encoded with its tokenizer, or with one its vocabulary grew from (whose pieces begin
    its own: growing appends pieces and moves no id but <mask>, which no shard holds)."""
    if manifest["tokenizer"]["sha256"] == run.tokenizer_sha256():
        return True
    ours, theirs = read_model(run.tokenizer), read_model(data_dir / TOKENIZER_FILE)
    return ours.normalizer_spec == theirs.normalizer_spec and \
        list(ours.pieces)[:len(theirs.pieces)] == list(theirs.pieces)


def _data_dirs(config: Config) -> list[DataDir]:
    """The data folders of the run and of each run it grew from; a source run that is gone is
    skipped."""
    dirs, seen = [], set()
    while config is not None:
        seen.add(Path(config.run_dir))
        dirs.append(DataDir(Path(config.data.dir), config.data.languages, config.run_dir))
        source = config.add_language.source_run
        readable = source and Path(source) not in seen and (Path(source) / CONFIG_FILE).is_file()
        config = load_config(Path(source) / CONFIG_FILE) if readable else None
    return dirs


def text_sources(texts: dict[str, Path], tokenizer: Path, work_dir: Path) -> dict[str, Source]:
    """Shards of the user's text files in ``work_dir``, tokenized with the run's tokenizer."""
    found = {}
    for lang, path in texts.items():
        where = f"--text {lang}={path}"
        if not path.is_file():
            raise EvaluationError(f"{where}: {path} does not exist")
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            raise EvaluationError(f"{where}: {path} is empty")
        try:
            manifest = ensure_prepared(work_dir / lang, path, tokenizer=tokenizer, languages=[lang],
                                       valid_fraction=TEXT_VALID_FRACTION, option="--text",
                                       quiet=True)
        except UserError as err:  # the text, or its encoding with the run's tokenizer
            raise EvaluationError(f"{where}: {err}") from None
        found[lang] = Source(work_dir / lang, [lang], manifest["tokenizer"]["vocab_size"])
    return found


# ---- the evaluation ---------------------------------------------------------------------------

@dataclass
class Request:
    """What to evaluate; empty ``langs`` means every run language that has valid text."""

    langs: list[str]
    texts: dict[str, Path]
    adapter_of: dict[str, str]
    draws: int = 3
    batches: int | None = None


def plan_rows(run: RunCheckpoint, request: Request, sources: Sources) -> list[tuple[str, str]]:
    """(text language, modules language) of each row, own modules first, in run order. A run
    with ``data.shared_module`` has no language's own modules: its rows run through that one."""
    known, shared, data = run.languages, run.config.data.shared_module, sources.found
    for lang in [*([] if shared else request.langs), *request.adapter_of.values()]:
        if lang not in known:
            raise EvaluationError(f"run {run.run_dir} has no language {lang}"
                                  f"{other_form_hint(lang, known)}; it has: {', '.join(known)}")
    for lang in [*request.langs, *request.adapter_of]:
        if lang not in data:
            raise EvaluationError(f"{lang} cannot be evaluated from {run.run_dir}'s data: "
                                  f"{sources.why_not(lang)}; pass --text {lang}=PATH")
    for lang in request.texts:
        if lang not in known and lang not in request.adapter_of:
            raise EvaluationError(f"run {run.run_dir} has no {lang} modules: add --adapter-of "
                                  f"{lang}=OTHER to evaluate {lang}'s text through another's")
    own = set(request.langs or data) | {lang for lang in request.texts if lang in known}
    if shared:
        rows = [(lang, shared) for lang in data if lang in own]
    else:
        rows = [(lang, lang) for lang in known if lang in own]
    return rows + list(request.adapter_of.items())


def skipped_languages(run: RunCheckpoint, request: Request, sources: Sources) -> dict[str, str]:
    """The run languages an evaluation of all of them leaves out, each with why: said, never
    silent. None when ``--langs`` chose, or when one shared module set runs every language."""
    if request.langs or run.config.data.shared_module:
        return {}
    return {lang: sources.why_not(lang) for lang in run.languages if lang not in sources.found}


def nothing_to_evaluate(run: RunCheckpoint) -> str:
    """Why no language of ``run`` has valid text: its data folder's manifest is gone, or the
    folder holds none of its languages."""
    data_dir = Path(run.config.data.dir)
    if not is_prepared(data_dir):
        missing = f"{data_dir / MANIFEST} does not exist (data.dir moved or deleted?)"
    else:
        missing = f"{data_dir} holds none of its languages ({', '.join(run.languages)})"
    return (f"nothing to evaluate in {run.run_dir}: {missing}; prepare it again or pass "
            "--text LANG=PATH")


def evaluate_run(run_dir: str | Path, request: Request, step: int | None = None) -> Evaluation:
    """Evaluate a run's checkpoint as ``request`` asks, on the CPU, without DeepSpeed."""
    from xmod_pretrain.runs.inference import load_run

    if request.draws < 1 or (request.batches is not None and request.batches < 1):
        raise EvaluationError("--draws and --batches must be at least 1")
    run = open_run(run_dir, step)
    with tempfile.TemporaryDirectory(prefix="xmod-eval-") as tmp:
        sources = run_sources(run)
        sources.found.update(text_sources(request.texts, run.tokenizer, Path(tmp)))
        plan = plan_rows(run, request, sources)
        if not plan:
            raise EvaluationError(nothing_to_evaluate(run))
        model = load_run(run_dir, step)[0].model
        cfg = run.config
        batches = request.batches or cfg.train.eval_batches

        def forward(batch: MicroBatch) -> torch.Tensor:
            return model(batch.input_ids, batch.lang, mlm_positions=batch.mlm_positions,
                         mlm_targets=batch.mlm_targets).loss

        rows = []
        for lang, modules in plan:
            source = sources.found[lang]
            # Data of a vocabulary the run grew from is masked as the trainer masks it: random
            # replacements among its own ids, <mask> where the run has it.
            masker = Masker(cfg.data.masking, source.vocab_size, mask_id=cfg.model.vocab_size - 1)
            valid = draw_batches(source.shards(), source.order.index(lang),
                                 run.languages.index(modules), masker, cfg.train.micro_batch_size,
                                 cfg.data.seq_len, batches, cfg.train.seed, request.draws)
            label = str(request.texts.get(lang, source.data_dir))
            rows.append(Row(lang, modules, masked_lm_loss(forward, valid),
                            sum(len(b.mlm_targets) for b in valid), label))
    return Evaluation(str(run.run_dir), str(run.path), run.step, request.draws, batches,
                      cfg.train.seed, rows, skipped_languages(run, request, sources))


# ---- output -----------------------------------------------------------------------------------

def format_rows(evaluation: Evaluation) -> str:
    """The printed table: one row per (text, modules), then the mean over own-module rows."""
    width = max(10, *(len(row.name) for row in evaluation.rows))
    lines = [evaluation.title(), f"  {'language':<{width}} {'loss':>8} {'ppl':>10} {'targets':>8}"]
    for row in evaluation.rows:
        lines.append(f"  {row.name:<{width}} {row.loss:>8.4f} {row.ppl:>10.2f} {row.targets:>8}")
    own = [row.loss for row in evaluation.rows if row.language == row.modules]
    if own:
        mean = sum(own) / len(own)
        lines.append(f"  {'mean':<{width}} {mean:>8.4f} {perplexity(mean):>10.2f}")
    lines += [f"  skipped {lang}: {why}" for lang, why in evaluation.skipped.items()]
    return "\n".join(lines)


def row_records(evaluation: Evaluation) -> list[dict]:
    return [{"name": r.name, "language": r.language, "modules": r.modules, "loss": r.loss,
             "ppl": r.ppl, "targets": r.targets, "data": r.data} for r in evaluation.rows]


def write_outputs(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """Write ``evaluation.json``, ``evaluation.csv`` and the bar chart ``evaluation.png``."""
    from xmod_pretrain.evaluation.report import evaluation_chart

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in OUTPUT_NAMES]
    records = row_records(evaluation)
    meta = {k: v for k, v in dataclasses.asdict(evaluation).items() if k != "rows"}
    paths[0].write_text(json.dumps({**meta, "rows": records}, indent=1) + "\n", encoding="utf-8")
    with open(paths[1], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    evaluation_chart(records, evaluation.title(), paths[2])
    return paths


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise EvaluationError(f"{flag} {value!r}: expected LANG=VALUE")
        pairs[key] = rest
    return pairs


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="xmod_pretrain evaluate",
        description="Per-language masked-LM loss and perplexity of a run's checkpoint, with "
                    "fixed masking, on its valid shards or on your text.")
    parser.add_argument("--from", dest="run", required=True, help="run directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    parser.add_argument("--langs", nargs="+", default=[], help="languages (default: all with data)")
    parser.add_argument("--text", action="append", default=[], metavar="LANG=PATH",
                        help="evaluate LANG on this text file instead (tokenized with the run's)")
    parser.add_argument("--adapter-of", action="append", default=[], metavar="LANG=OTHER",
                        help="also evaluate LANG's text through OTHER's modules (zero-shot)")
    parser.add_argument("--draws", type=int, default=3, help="mask draws averaged (default 3)")
    parser.add_argument("--batches", type=int, help="batches per draw (default: the run's "
                                                    "train.eval_batches)")
    parser.add_argument("--out", help="output folder (default: the run directory)")
    return parser.parse_args(argv)


def check_evaluation_out(out: Path, run: Path) -> Path:
    """The tables go into the run itself (or a folder in it) or a folder of their own: never
    into a run's checkpoints, nor into or inside another run, whose report would then show this
    run's numbers."""
    check_not_inside_run(out, "--out", own_run=run)
    if (out / CHECKPOINTS).is_dir() and out.resolve() != run.resolve():
        raise EvaluationError(f"--out {out} is another run: its report would show {run}'s "
                              "numbers; write the tables into the run or a folder of their own")
    return out


def main(argv: Sequence[str]) -> int:
    """``xmod_pretrain evaluate``; returns the exit status (1 on unusable input)."""
    args = parse_args(argv)
    try:
        out = check_evaluation_out(Path(args.out or args.run), Path(args.run))
        texts = {lang: Path(p) for lang, p in _pairs(args.text, "--text").items()}
        request = Request(args.langs, texts, _pairs(args.adapter_of, "--adapter-of"),
                          args.draws, args.batches)
        evaluation = evaluate_run(args.run, request, args.step)
    except UserError as err:
        print(f"xmod_pretrain evaluate: error: {err}", file=sys.stderr, flush=True)
        return 1
    print(format_rows(evaluation), flush=True)
    paths = write_outputs(evaluation, out)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
