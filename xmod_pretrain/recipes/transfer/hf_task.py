"""Classification tasks from ``datasets``: ``hf:NAME[:CONFIG]``, a hub dataset or a local copy
of one, with one config per language, the way XNLI is laid out.

XNLI (``facebook/xnli``) has a config per language (``en``, ``de``, ``zh``, ...), each with the
splits ``train``, ``validation`` and ``test`` and the columns ``premise``, ``hypothesis`` and
``label`` (a class label: entailment, neutral, contradiction). ``CONFIG`` is the config name of
a language, with ``{lang}`` -> ``en_XX`` and ``{iso}`` -> ``en``, as in data preparation's
``hf:`` sources, but with XNLI's ``{iso}`` as the default (data preparation's is ``{lang}``).
The source language's ``train`` and ``validation`` (or ``dev``) splits train and pick the
checkpoint; every language's ``test`` split is scored.

The task's content hash is that of every file of a local folder (hidden ones aside), or of a hub
dataset the fingerprints datasets gives each split loaded, which follow the dataset's revision.
A data file that cannot be read is named, with its split.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from data_prep.sources import HF_ERRORS, fill_template, parse_hf_spec
from xmod_pretrain.recipes.transfer.tasks import (
    TEXT_B_COLUMNS,
    TEXT_COLUMNS,
    ClassificationTask,
    Example,
    TransferTaskError,
    content_hash,
    row_example,
    train_labels,
)

DEFAULT_CONFIG = "{iso}"
SPLIT_NAMES = {"train": ("train",), "dev": ("validation", "dev"), "test": ("test",)}


def hf_task(spec: str, source: str, languages: list[str]) -> ClassificationTask:
    """The task ``hf:NAME[:CONFIG]``: train and dev of ``source``, test of every language of
    ``source`` and ``languages`` whose config the dataset has."""
    name, template = parse_hf_spec(spec)
    template = template or DEFAULT_CONFIG
    if fill_template(template, "aa_AA", spec) == fill_template(template, "bb_BB", spec):
        raise TransferTaskError(f"{spec}: CONFIG {template!r} names the same config for every "
                                "language; name each language's with {lang} or {iso}")
    configs = _config_names(name, spec)
    wanted = {lang: fill_template(template, lang, spec)
              for lang in dict.fromkeys([source, *languages])}
    if wanted[source] not in configs:
        raise TransferTaskError(f"{spec}: no config {wanted[source]!r} for the source language "
                                f"{source} (it has {', '.join(configs)})")
    loaded = {lang: _load(name, config, spec) for lang, config in wanted.items()
              if config in configs}
    where = {lang: f"{spec} {config}" for lang, config in wanted.items()}
    train = _examples(loaded[source], "train", where[source], None)
    labels = train_labels(train, f"{where[source]}/train")
    # A class label keeps the dataset's ids (XNLI: 0 entailment, 1 neutral, 2 contradiction).
    order = [n for n in _label_names(loaded[source]["train"]) if n in labels] or sorted(labels)
    return ClassificationTask(
        name=name.rstrip("/").rsplit("/", 1)[-1], source=source, labels=order, train=train,
        dev=_examples(loaded[source], "dev", where[source], labels),
        test={lang: _examples(splits, "test", where[lang], labels)
              for lang, splits in loaded.items()},
        content_hash=_content_hash(name, loaded))


def _content_hash(name: str, loaded: dict) -> str:
    """A local folder: its files (the README's configs and features, every data file); a hub
    dataset: each loaded split's fingerprint (``loaded``: language -> DatasetDict)."""
    root = Path(name)
    if root.is_dir():
        files = [p for p in sorted(root.rglob("*")) if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(root).parts)]
        return content_hash((str(p.relative_to(root)), p) for p in files)
    fingerprints = {lang: {split: rows._fingerprint for split, rows in splits.items()}
                    for lang, splits in loaded.items()}
    return hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()


def _config_names(name: str, spec: str) -> list[str]:
    import datasets

    try:
        return list(datasets.get_dataset_config_names(name))
    except HF_ERRORS as e:
        raise TransferTaskError(f"{spec}: cannot read the dataset ({type(e).__name__}: {e})") \
            from None


def _load(name: str, config: str, spec: str):
    import datasets
    from datasets.exceptions import DatasetGenerationError

    try:
        if Path(name).is_dir():
            return _load_folder(name, config)
        return datasets.load_dataset(name, config)
    except DatasetGenerationError as e:  # a data file it found but could not read
        raise TransferTaskError(f"{spec}: cannot load config {config!r}: "
                                f"{_unreadable(name, config, e.__cause__ or e)}") from None
    except HF_ERRORS as e:
        raise TransferTaskError(f"{spec}: cannot load config {config!r} "
                                f"({type(e).__name__}: {e})") from None


def _load_folder(name: str, config: str):
    """A local folder's config, read through a cache of this call's own, into memory. datasets
    keys its shared cache of a local folder by the config's file patterns, not by the files'
    contents or the folder's path: an edited folder (or another of the same name) would be served
    stale, and two processes loading such folders at once would rewrite one cache folder."""
    import datasets

    with tempfile.TemporaryDirectory(prefix="xmod-task-cache-") as cache:
        return datasets.load_dataset(name, config, cache_dir=cache, keep_in_memory=True)


def _unreadable(name: str, config: str, cause: BaseException) -> str:
    """What datasets could not read: the parquet file of a local folder's ``config`` whose
    footer does not parse, with its split (datasets' own error names neither); otherwise its
    cause, on one line."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    reason = f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    if not Path(name).is_dir():
        return reason
    for split, files in datasets.load_dataset_builder(name, config).config.data_files.items():
        for file in (f for f in files if f.endswith(".parquet")):
            try:
                pq.read_metadata(file)
            except (pa.ArrowException, OSError) as err:
                return (f"{file} ({split} split) is not a readable parquet file "
                        f"({' '.join(str(err).split())})")
    return reason


def _examples(splits, split: str, where: str, labels: set[str] | None) -> list[Example]:
    """The examples of ``split``, its columns read at once; class-label ids become their names,
    and -1 (unlabelled, as in GLUE's test splits) is refused."""
    found = next((s for s in SPLIT_NAMES[split] if s in splits), None)
    if found is None:
        raise TransferTaskError(f"{where}: no {' or '.join(SPLIT_NAMES[split])} split "
                                f"(it has {', '.join(splits)})")
    rows, where = splits[found], f"{where}/{found}"
    if "label" not in rows.column_names:
        raise TransferTaskError(f"{where}: no label column (it has {', '.join(rows.column_names)})")
    names = _label_names(rows)
    kept = [c for c in ("label", *TEXT_COLUMNS, *TEXT_B_COLUMNS) if c in rows.column_names]
    columns = rows.select_columns(kept).to_dict()
    examples = []
    for number, values in enumerate(zip(*columns.values())):
        row = dict(zip(columns, values))
        if names and row["label"] is not None:
            if row["label"] < 0:
                raise TransferTaskError(f"{where} row {number}: unlabelled (label {row['label']})")
            row["label"] = names[row["label"]]
        examples.append(row_example(row, f"{where} row {number}", labels))
    if not examples:
        raise TransferTaskError(f"{where} holds no examples")
    return examples


def _label_names(rows) -> list[str]:
    """The names of a class-label column, in id order; empty for plain labels."""
    return list(getattr(rows.features.get("label"), "names", None) or [])
