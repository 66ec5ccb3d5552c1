"""Transfer tasks: what is fine-tuned on the source language and evaluated on every other.

``guide-topic`` and ``udhr-retrieval`` are built from the bundled corpus (no network); a user
task is a folder or JSON manifest of per-language JSONL files::

    TASK/train/en_XX.jsonl   TASK/dev/en_XX.jsonl   TASK/test/<xx_YY>.jsonl ...

or ``{"train": {"en_XX": "a.jsonl"}, "dev": {...}, "test": {"de_DE": "b.jsonl", ...}}`` with
paths relative to the manifest. One example a line: ``{"text": ..., "label": ...}``, or
``{"text_a": ..., "text_b": ..., "label": ...}`` for sentence pairs (XNLI's premise and
hypothesis). Labels are strings or ints; the label set is the source train file's. A
``datasets`` source, ``hf:NAME[:CONFIG]``, is read by ``xmod_pretrain.recipes.transfer.hf_task``.

Every classification task carries a hash of its content (``content_hash``): the bytes of every
file it reads, each under its role in the task, or for a hub dataset the fingerprints datasets
gives its splits. A resumed transfer compares it with the hash its run recorded when it started.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.sources import CORPUS_DIR, HF_PREFIX
from xmod_core.errors import UserError
from xmod_core.languages import check_language_code

GUIDE_TOPIC = "guide-topic"
UDHR_RETRIEVAL = "udhr-retrieval"
BUNDLED_TASKS = {
    GUIDE_TOPIC: "classify a Debian Installation Guide paragraph by its chapter (13 labels)",
    UDHR_RETRIEVAL: "find each UDHR article's translation among the 31 parts, no training",
}
SPLITS = ("train", "dev", "test")
# guide-topic: a page's chapter or appendix (data_prep/build_bundle.py writes the page files).
_TOPIC = re.compile(r"^(ch\d+|ap[a-z])")
# A leading "1." / "(2)" / "3)" that numbered lists leave in some translations.
_NUMBERING = re.compile(r"^\(?\d+[.)]\s+")


class TransferTaskError(UserError, ValueError):
    """A task that cannot be read or does not fit the request; names the file or language."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    text_b: str | None = None  # the second sentence of a pair task


@dataclass
class ClassificationTask:
    """Labelled text: the source language's train and dev, and test sets by language."""

    name: str
    source: str
    labels: list[str]                      # the source train labels: index = class id
    train: list[Example]
    dev: list[Example]
    test: dict[str, list[Example]]         # every language with test data, the source included
    content_hash: str                      # sha256 of what the task was read from

    def label_ids(self, examples: list[Example]) -> list[int]:
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[e.label] for e in examples]


@dataclass
class RetrievalTask:
    """Parallel text: ``items[lang][k]`` is the same unit (an article) in every language."""

    name: str
    source: str
    keys: list[str]
    items: dict[str, list[str]] = field(default_factory=dict)


def content_hash(files: Iterable[tuple[str, Path]]) -> str:
    """sha256 over ``(role, file)`` pairs in the order given: each file's role in the task (a
    split and language, or its name in its folder) and its bytes. A file edited, added, renamed
    or swapped for another changes it; the task's folder moved does not."""
    digest = hashlib.sha256()
    for role, path in files:
        with path.open("rb") as f:
            digest.update(f"{role}\0{hashlib.file_digest(f, 'sha256').hexdigest()}\n".encode())
    return digest.hexdigest()


def load_task(spec: str, source: str,
              languages: list[str] | None = None) -> ClassificationTask | RetrievalTask:
    """The task named by ``spec``: a bundled task's name, a folder, a JSON manifest, or
    ``hf:NAME[:CONFIG]``; ``languages``: the test languages to look for where the task cannot
    list its own (``hf:``; default: the source only)."""
    check_language_code(source, "transfer.source")
    if spec.startswith(HF_PREFIX):
        from xmod_pretrain.recipes.transfer.hf_task import hf_task  # datasets is heavy: only here

        return hf_task(spec, source, languages or [])
    if spec == GUIDE_TOPIC:
        return guide_topic(source)
    if spec == UDHR_RETRIEVAL:
        return udhr_retrieval(source)
    path = Path(spec)
    if path.is_dir() or (path.is_file() and path.suffix == ".json"):
        return user_task(path, source)
    known = ", ".join(BUNDLED_TASKS)
    raise TransferTaskError(f"transfer.task={spec!r} is neither a bundled task ({known}), a "
                            f"folder or .json manifest of JSONL files, nor {HF_PREFIX}NAME")


# ---- bundled ------------------------------------------------------------------------------


def _xz_lines(path: Path) -> list[str]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _paged_lines(folder: Path, lang: str) -> list[tuple[str, str]]:
    """(page, line) of every line of ``folder/<lang>.txt.xz``, from the folder's pages.json."""
    lines = _xz_lines(folder / f"{lang}.txt.xz")
    runs = json.loads((folder / "pages.json").read_text(encoding="utf-8"))[lang]
    pages = [page for page, count in runs for _ in range(count)]
    if len(pages) != len(lines):
        raise TransferTaskError(f"{folder}/pages.json: {len(pages)} pages of lines for {lang}, "
                                f"its text has {len(lines)} lines (rebuild the bundle)")
    return list(zip(pages, lines))


def guide_topic(source: str) -> ClassificationTask:
    """Train and dev from the source language's pre-training text (the train and dev pages),
    test from every language's held-out test pages, which pre-training never saw."""
    guide, topic = CORPUS_DIR / "debian_ig", CORPUS_DIR / "guide_topic"
    languages = sorted(p.name.removesuffix(".txt.xz") for p in topic.glob("*.txt.xz"))
    if source not in languages:
        raise TransferTaskError(f"{GUIDE_TOPIC} has no {source}: its languages are "
                                f"{', '.join(languages)}")
    splits = json.loads((topic / "splits.json").read_text(encoding="utf-8"))

    def examples(pairs: list[tuple[str, str]], split: str) -> list[Example]:
        return [Example(text=line, label=_TOPIC.match(page).group(1))
                for page, line in pairs if splits.get(page) == split]

    pretraining = _paged_lines(guide, source)
    train, dev = examples(pretraining, "train"), examples(pretraining, "dev")
    test = {lang: examples(_paged_lines(topic, lang), "test") for lang in languages}
    read = [guide / f"{source}.txt.xz", guide / "pages.json", topic / "splits.json",
            topic / "pages.json", *(topic / f"{lang}.txt.xz" for lang in languages)]
    return ClassificationTask(name=GUIDE_TOPIC, source=source,
                              labels=sorted({e.label for e in train}), train=train, dev=dev,
                              test=test, content_hash=content_hash(
                                  (str(p.relative_to(CORPUS_DIR)), p) for p in read))


def udhr_retrieval(source: str) -> RetrievalTask:
    """The preamble and the 30 articles of every bundled declaration, headings removed (they
    carry the article's number) and list numbering stripped, one text per part."""
    folder = CORPUS_DIR / "udhr"
    spans = json.loads((folder / "articles.json").read_text(encoding="utf-8"))
    if source not in spans:
        raise TransferTaskError(f"{UDHR_RETRIEVAL} has no {source}: its languages are "
                                f"{', '.join(sorted(spans))}")
    items = {}
    for lang, parts in sorted(spans.items()):
        lines = _xz_lines(folder / f"{lang}.txt.xz")
        items[lang] = [" ".join(_NUMBERING.sub("", line) for line in lines[first:end])
                       for _, first, end in parts]
    keys = [key for key, _, _ in spans[source]]
    return RetrievalTask(name=UDHR_RETRIEVAL, source=source, keys=keys, items=items)


# ---- user tasks ---------------------------------------------------------------------------


def task_files(path: Path) -> dict[str, dict[str, Path]]:
    """split -> language -> JSONL file of a task folder (``SPLIT/<xx_YY>.jsonl``) or manifest."""
    if path.is_dir():
        files = {split: {f.stem: f for f in sorted((path / split).glob("*.jsonl"))}
                 for split in SPLITS}
    else:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise TransferTaskError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(manifest, dict) or set(manifest) - set(SPLITS):
            raise TransferTaskError(f"{path}: a manifest maps {', '.join(SPLITS)} to "
                                    "{language: file}")
        files = {split: {lang: path.parent / name for lang, name in manifest.get(split, {}).items()}
                 for split in SPLITS}
    for split, by_lang in files.items():
        for lang, file in by_lang.items():
            check_language_code(lang, f"{path} {split}")
            if not file.is_file():
                raise TransferTaskError(f"{path}: {split} file of {lang} not found: {file}")
    return files


def read_examples(path: Path, labels: set[str] | None = None) -> list[Example]:
    """The examples of one JSONL file; with ``labels``, every label must be one of them."""
    examples = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                examples.append(_example(line, f"{path}:{number}", labels))
    if not examples:
        raise TransferTaskError(f"{path} holds no examples")
    return examples


def _example(line: str, where: str, labels: set[str] | None) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise TransferTaskError(f"{where}: not a JSON object ({err.msg})") from None
    if not isinstance(row, dict):
        raise TransferTaskError(f"{where}: not a JSON object")
    return row_example(row, where, labels)


# Column names read as the text, the second text of a pair, in this order: ours first, then
# those of XNLI (premise, hypothesis) and of GLUE-style pair tasks (sentence1, sentence2).
TEXT_COLUMNS = ("text", "text_a", "premise", "sentence1", "sentence")
TEXT_B_COLUMNS = ("text_b", "hypothesis", "sentence2")


def row_example(row: dict, where: str, labels: set[str] | None) -> Example:
    """One example from a row's ``label`` and text columns; names ``where`` when it has none."""
    if row.get("label") is None:
        raise TransferTaskError(f"{where}: no \"label\"")
    label = str(row["label"])
    if labels is not None and label not in labels:
        raise TransferTaskError(f"{where}: label {label!r} is not in the source train set's "
                                f"labels ({', '.join(sorted(labels))})")
    text = next((row[c] for c in TEXT_COLUMNS if c in row), None)
    if not isinstance(text, str) or not text.strip():
        raise TransferTaskError(f"{where}: no text string (a column of "
                                f"{', '.join(TEXT_COLUMNS)})")
    text_b = next((row[c] for c in TEXT_B_COLUMNS if c in row), None)
    if text_b is not None and not isinstance(text_b, str):
        raise TransferTaskError(f"{where}: \"{next(c for c in TEXT_B_COLUMNS if c in row)}\" "
                                "is not a string")
    return Example(text=text, label=label, text_b=text_b)


def user_task(path: Path, source: str) -> ClassificationTask:
    files = task_files(path)
    for split in SPLITS:  # the source's test row heads the table, beside the targets'
        if source not in files[split]:
            raise TransferTaskError(f"{path}: no {split} file for the source language {source} "
                                    f"(has {', '.join(files[split]) or 'none'})")
    train = read_examples(files["train"][source])
    labels = train_labels(train, files["train"][source])
    read = [("train", source, files["train"][source]), ("dev", source, files["dev"][source]),
            *(("test", lang, files["test"][lang]) for lang in sorted(files["test"]))]
    return ClassificationTask(
        name=path.stem, source=source, labels=sorted(labels), train=train,
        dev=read_examples(files["dev"][source], labels),
        test={lang: read_examples(file, labels) for lang, file in files["test"].items()},
        content_hash=content_hash((f"{split}/{lang}", file) for split, lang, file in read))


def train_labels(train: list[Example], where: object) -> set[str]:
    labels = {e.label for e in train}
    if len(labels) < 2:
        raise TransferTaskError(f"{where}: one label only ({', '.join(labels)}); a classifier "
                                "needs at least two")
    return labels


def check_targets(task: ClassificationTask | RetrievalTask, targets: list[str],
                  known: list[str]) -> list[str]:
    """The target languages: ``targets``, or every language of ``known`` (the model's) with
    test data but the source."""
    available = sorted(task.test if isinstance(task, ClassificationTask) else task.items)
    for lang in targets:
        check_language_code(lang, "transfer.targets")
        if lang not in available:
            raise TransferTaskError(f"{task.name} has no test data for {lang} (it has "
                                    f"{', '.join(available)})")
    return list(targets) or [lang for lang in available if lang != task.source and lang in known]
