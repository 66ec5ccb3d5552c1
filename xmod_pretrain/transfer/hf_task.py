"""Classification tasks from ``datasets``: ``hf:NAME[:CONFIG]``, a hub dataset or a local copy
of one, with one config per language, the way XNLI is laid out.

XNLI (``facebook/xnli``) has a config per language (``en``, ``de``, ``zh``, ...), each with the
splits ``train``, ``validation`` and ``test`` and the columns ``premise``, ``hypothesis`` and
``label`` (a class label: entailment, neutral, contradiction). ``CONFIG`` is the config name of
a language, with ``{lang}`` -> ``en_XX`` and ``{iso}`` -> ``en`` (default ``{iso}``, XNLI's),
as in data preparation's ``hf:`` sources. The source language's ``train`` and ``validation``
(or ``dev``) splits train and pick the checkpoint; every language's ``test`` split is scored.
"""

from __future__ import annotations

from data_prep.sources import HF_PREFIX
from xmod_pretrain.transfer.tasks import (
    ClassificationTask,
    Example,
    TransferTaskError,
    row_example,
    train_labels,
)

DEFAULT_CONFIG = "{iso}"
SPLIT_NAMES = {"train": ("train",), "dev": ("validation", "dev"), "test": ("test",)}


def hf_task(spec: str, source: str, languages: list[str]) -> ClassificationTask:
    """The task ``hf:NAME[:CONFIG]``: train and dev of ``source``, test of every language of
    ``source`` and ``languages`` whose config the dataset has."""
    name, _, template = spec.removeprefix(HF_PREFIX).partition(":")
    if not name:
        raise TransferTaskError(f"transfer.task={spec!r}: expected {HF_PREFIX}NAME[:CONFIG]")
    configs = _config_names(name, spec)
    wanted = {lang: _config(template or DEFAULT_CONFIG, lang, spec)
              for lang in dict.fromkeys([source, *languages])}
    if wanted[source] not in configs:
        raise TransferTaskError(f"{spec}: no config {wanted[source]!r} for the source language "
                                f"{source} (it has {', '.join(configs)})")
    source_splits = _load(name, wanted[source], spec)
    train = _examples(source_splits, "train", f"{spec} {wanted[source]}", None)
    labels = train_labels(train, f"{spec} {wanted[source]}/train")
    # A class label keeps the dataset's ids (XNLI: 0 entailment, 1 neutral, 2 contradiction).
    order = [n for n in _label_names(source_splits["train"]) if n in labels] or sorted(labels)
    dev = _examples(source_splits, "dev", f"{spec} {wanted[source]}", labels)
    test = {lang: _examples(_load(name, config, spec), "test", f"{spec} {config}", labels)
            for lang, config in wanted.items() if config in configs}
    return ClassificationTask(name=name.rstrip("/").rsplit("/", 1)[-1], source=source,
                              labels=order, train=train, dev=dev, test=test)


def _config(template: str, lang: str, spec: str) -> str:
    try:
        return template.format(lang=lang, iso=lang.split("_")[0])
    except (KeyError, IndexError, ValueError) as e:
        raise TransferTaskError(f"{spec}: bad config field {e}; use {{lang}} or {{iso}}") from None


def _config_names(name: str, spec: str) -> list[str]:
    import datasets

    try:
        return list(datasets.get_dataset_config_names(name))
    except (OSError, ValueError, ConnectionError) as e:  # not found, offline, not a dataset
        raise TransferTaskError(f"{spec}: cannot read the dataset ({type(e).__name__}: {e})") \
            from None


def _load(name: str, config: str, spec: str):
    import datasets

    try:
        return datasets.load_dataset(name, config)
    except (OSError, ValueError, ConnectionError) as e:
        raise TransferTaskError(f"{spec}: cannot load config {config!r} "
                                f"({type(e).__name__}: {e})") from None


def _examples(splits, split: str, where: str, labels: set[str] | None) -> list[Example]:
    """The examples of ``split``; class-label ids become their names, and -1 (unlabelled, as in
    GLUE's test splits) is refused."""
    found = next((s for s in SPLIT_NAMES[split] if s in splits), None)
    if found is None:
        raise TransferTaskError(f"{where}: no {' or '.join(SPLIT_NAMES[split])} split "
                                f"(it has {', '.join(splits)})")
    rows = splits[found]
    names = _label_names(rows)
    examples = []
    for number, row in enumerate(rows):
        if names and row["label"] is not None:
            row = {**row, "label": names[row["label"]] if row["label"] >= 0 else None}
        examples.append(row_example(row, f"{where}/{found} row {number}", labels))
    if not examples:
        raise TransferTaskError(f"{where}/{found} holds no examples")
    return examples


def _label_names(rows) -> list[str]:
    """The names of a class-label column, in id order; empty for plain labels."""
    return list(getattr(rows.features.get("label"), "names", None) or [])
