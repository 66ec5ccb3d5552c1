"""Transfer: the frozen set, the classifier's parity with transformers, zero-shot through the
target's modules, the checkpoint choice, the sampler, the scores and the task readers."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.unit.test_model import FLAG_SETS, TINY
from tests.xnli_folder import XNLI_LABELS, write_xnli_folder, xnli_rows
from xmod_core.errors import UserError
from xmod_core.shards import TOKENIZER_FILE
from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.interop import hf_config
from xmod_pretrain.interop.folder import write_folder
from xmod_pretrain.recipes.transfer.batches import ExampleSampler, fixed_batches
from xmod_pretrain.recipes.transfer.classifier import (
    XmodForSequenceClassification,
    freeze_embeddings_and_language_adapters,
)
from xmod_pretrain.recipes.transfer.recipe import choose_checkpoint
from xmod_pretrain.recipes.transfer.scoring import predictions, top1, wilson_interval
from xmod_pretrain.recipes.transfer.tasks import (
    GUIDE_TOPIC,
    UDHR_RETRIEVAL,
    Example,
    TransferTaskError,
    check_targets,
    load_task,
)

transformers = pytest.importorskip("transformers")


def classifier(flags: dict, num_labels: int = 3) -> XmodForSequenceClassification:
    torch.manual_seed(0)
    return XmodForSequenceClassification(dataclasses.replace(TINY, **flags), num_labels).eval()


def hf_classifier(model: XmodForSequenceClassification):
    config = transformers.XmodConfig(**hf_config(model.config), num_labels=model.num_labels)
    return transformers.XmodForSequenceClassification(config).eval()


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
def test_frozen_set_is_transformers_freeze_embeddings_and_language_adapters(flags):
    ours = classifier(flags)
    theirs = hf_classifier(ours)
    freeze_embeddings_and_language_adapters(ours)
    theirs.freeze_embeddings_and_language_adapters()
    assert {n: p.requires_grad for n, p in ours.named_parameters()} == \
        {n: p.requires_grad for n, p in theirs.named_parameters()}
    assert any(p.requires_grad for p in ours.parameters())  # the encoder and head still train


def test_exported_classifier_logits_equal_ours(tiny_data, tmp_path):
    vocab = Tokenizer.from_file(Path(tiny_data) / TOKENIZER_FILE).vocab_size
    torch.manual_seed(0)
    ours = XmodForSequenceClassification(dataclasses.replace(TINY, vocab_size=vocab), 3).eval()
    write_folder(ours.state_dict(), ours.config, Path(tiny_data) / TOKENIZER_FILE, tmp_path,
                 "de_DE", {"architectures": ["XmodForSequenceClassification"], "num_labels": 3})
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(4, 600, (2, 9))
    for lang, code in enumerate(ours.languages):
        lang_ids = torch.full((2,), theirs.config.languages.index(code))
        expected = theirs(input_ids=ids, lang_ids=lang_ids).logits
        torch.testing.assert_close(ours(ids, lang).logits, expected, atol=1e-5, rtol=1e-5)


def test_zero_shot_runs_through_the_targets_modules():
    model = classifier(FLAG_SETS["base-postnorm"])
    ids = torch.randint(4, 100, (6, 7))
    batches = fixed_batches(ids.tolist(), [0, 1, 2, 0, 1, 2], lang=1, pad_id=1, batch_size=3)
    before = [model(b.input_ids, 1).logits for b in batches]
    with torch.no_grad():  # another language's modules: the target's scores do not move
        for name, param in model.named_parameters():
            if ".adapter_modules.en_XX." in name:
                param.add_(1.0)
    assert all(torch.equal(model(b.input_ids, 1).logits, x) for b, x in zip(batches, before))
    with torch.no_grad():  # the target's own modules: they do
        for name, param in model.named_parameters():
            if ".adapter_modules.de_DE." in name:
                param.mul_(50.0)
    assert not all(torch.equal(model(b.input_ids, 1).logits, x) for b, x in zip(batches, before))
    own = [model(b.input_ids, 1).logits.argmax(-1).tolist() for b in batches]
    assert predictions(model, batches) == sum(own, [])  # a batch runs through its own language


def test_the_checkpoint_is_the_best_on_source_dev_the_earliest_of_equals():
    assert choose_checkpoint({10: 0.4, 20: 0.6, 30: 0.6, 40: 0.5}) == 20
    assert choose_checkpoint({5: 0.1}) == 5


def test_sampler_gives_the_same_examples_for_any_split_of_the_global_batch():
    rows, labels = [[0, i, 2] for i in range(10)], list(range(10))
    one = ExampleSampler(rows, labels, 0, 1, batch_size=4, per_step=2, seed=3)
    seen_one = [one.micro_batch(s, 0, i).labels.tolist() for s in range(3) for i in range(2)]
    two = ExampleSampler(rows, labels, 0, 1, batch_size=4, per_step=2, seed=3)
    seen_two = [two.micro_batch(s, i, i).labels.tolist() for s in range(3) for i in range(2)]
    assert seen_one == seen_two
    first_epoch = sum(seen_one, [])[:10]
    assert sorted(first_epoch) == labels  # every example once per epoch
    other_seed = ExampleSampler(rows, labels, 0, 1, batch_size=4, per_step=2, seed=4)
    assert other_seed.micro_batch(0, 0, 0).labels.tolist() != seen_one[0]


def test_wilson_interval_and_top1():
    low, high = wilson_interval(0.5, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    # the interval always holds the estimate (1.0 over 24 rounds to 0.999... unclamped)
    assert all(low <= a <= high for n in range(1, 100) for a in (0.0, 1.0)
               for low, high in [wilson_interval(a, n)])
    x = torch.randn(5, 8)
    assert top1(x, x + 0.01 * torch.randn(5, 8)) == 1.0
    assert top1(x, x.flip(0)) < 1.0


def test_bundled_tasks():
    task = load_task(GUIDE_TOPIC, "en_XX")
    assert len(task.labels) == 13 and len(task.test) == 19
    assert not {e.text for e in task.train} & {e.text for e in task.test["en_XX"]}
    assert not {e.text for e in task.dev} & {e.text for e in task.test["en_XX"]}
    udhr = load_task(UDHR_RETRIEVAL, "en_XX")
    assert len(udhr.keys) == 31 and "yo_NG" in udhr.items
    assert all(len(items) == 31 for items in udhr.items.values())
    assert not any(text.startswith("Article") for text in udhr.items["en_XX"])


def write_task(root: Path, rows: dict[str, list[dict]]) -> Path:
    for name, lines in rows.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return root


GOOD = {"train/en_XX.jsonl": [{"text": "a b", "label": "x"}, {"text": "c", "label": "y"}],
        "dev/en_XX.jsonl": [{"text": "d", "label": "x"}],
        "test/en_XX.jsonl": [{"text": "g", "label": "x"}],
        "test/de_DE.jsonl": [{"text_a": "e", "text_b": "f", "label": "y"}]}


def test_a_user_task_folder_and_manifest(tmp_path):
    task = load_task(str(write_task(tmp_path / "t", GOOD)), "en_XX")
    assert task.labels == ["x", "y"] and task.test["de_DE"][0].text_b == "f"
    manifest = tmp_path / "t" / "task.json"
    manifest.write_text(json.dumps({"train": {"en_XX": "train/en_XX.jsonl"},
                                    "dev": {"en_XX": "dev/en_XX.jsonl"},
                                    "test": {"de_DE": "test/de_DE.jsonl",
                                             "en_XX": "test/en_XX.jsonl"}}))
    assert load_task(str(manifest), "en_XX").test == task.test


def test_a_tasks_content_hash_follows_what_it_reads(tmp_path):
    """The same files in their roles hash the same (moved, or listed by a manifest); a label
    edited, or a test language added, changes the hash; a file the task does not read does not."""
    folder = write_task(tmp_path / "t", GOOD)
    first = load_task(str(folder), "en_XX").content_hash
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "t")
    assert load_task(str(moved), "en_XX").content_hash == first
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({split: {path.stem: str(path.relative_to(tmp_path))
                                            for path in sorted((folder / split).glob("*.jsonl"))}
                                    for split in ("train", "dev", "test")}))
    assert load_task(str(manifest), "en_XX").content_hash == first
    write_task(moved, {"train/de_DE.jsonl": GOOD["train/en_XX.jsonl"]})  # not read: en_XX trains
    assert load_task(str(moved), "en_XX").content_hash == first
    write_task(moved, {"dev/en_XX.jsonl": [{"text": "d", "label": "y"}]})
    relabelled = load_task(str(moved), "en_XX").content_hash
    write_task(moved, {"test/ru_RU.jsonl": GOOD["test/de_DE.jsonl"]})
    assert len({first, relabelled, load_task(str(moved), "en_XX").content_hash}) == 3
    bundled = {load_task(GUIDE_TOPIC, source).content_hash for source in ("en_XX", "en_XX", "de_DE")}
    assert len(bundled) == 2  # the same files read alike; another source reads another file


@pytest.mark.parametrize("change, named", [
    ({"test/de_DE.jsonl": [{"text": "e", "label": "z"}]}, "label 'z' is not in"),
    ({"dev/en_XX.jsonl": [{"text": "d"}]}, "dev/en_XX.jsonl:1: no \"label\""),
    ({"test/de_DE.jsonl": []}, "test/de_DE.jsonl holds no examples"),
    ({"train/en_XX.jsonl": [{"text": "a", "label": "x"}]}, "one label only"),
    ({"test/en_XX.jsonl": None}, "no test file for the source language en_XX (has de_DE)"),
])
def test_bad_user_tasks_are_refused_naming_the_file(tmp_path, change, named):
    files = {name: rows for name, rows in {**GOOD, **change}.items() if rows is not None}
    with pytest.raises(TransferTaskError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_task(str(write_task(tmp_path / "t", files)), "en_XX")


def test_unknown_task_and_language_without_test_data():
    with pytest.raises(TransferTaskError, match="neither a bundled task"):
        load_task("no-such-task", "en_XX")
    with pytest.raises(TransferTaskError, match="no test data for fi_FI"):
        check_targets(load_task(GUIDE_TOPIC, "en_XX"), ["fi_FI"], [])
    with pytest.raises(TransferTaskError, match="has no yo_NG"):
        load_task(GUIDE_TOPIC, "yo_NG")
    # by default the targets are the model's languages with test data (not yo_NG on the demo)
    udhr = load_task(UDHR_RETRIEVAL, "en_XX")
    assert check_targets(udhr, [], ["en_XX", "de_DE", "el_GR"]) == ["de_DE", "el_GR"]


@pytest.fixture(scope="module")
def xnli(tmp_path_factory):
    pytest.importorskip("datasets")
    return write_xnli_folder(tmp_path_factory.mktemp("hf") / "xnli",
                             {"en": "en_XX", "de": "de_DE", "ru": "ru_RU"})


def test_an_hf_task_in_xnli_layout(xnli):
    task = load_task(f"hf:{xnli}", "en_XX", ["de_DE", "el_GR"])
    assert task.labels == XNLI_LABELS  # the class label's own ids, not sorted names
    assert len(task.train) == len(task.dev) == 24
    assert sorted(task.test) == ["de_DE", "en_XX"]  # el_GR has no config: no test data
    for examples, lang, split in ((task.train, "en_XX", "train"), (task.dev, "en_XX", "validation"),
                                  (task.test["de_DE"], "de_DE", "test")):
        first = xnli_rows(lang, split, 1)  # each split's own rows, in order
        assert examples[0] == Example(text=first["premise"][0], label="entailment",
                                      text_b=first["hypothesis"][0])
    with pytest.raises(TransferTaskError, match="no test data for el_GR"):
        check_targets(task, ["el_GR"], [])
    # {lang} names a config by the full code: the folder has none of them
    with pytest.raises(TransferTaskError, match="no config 'en_XX' for the source language"):
        load_task(f"hf:{xnli}:{{lang}}", "en_XX")


def test_bad_hf_tasks_are_refused_naming_the_problem(xnli, tmp_path):
    with pytest.raises(TransferTaskError, match="cannot read the dataset"):
        load_task(f"hf:{tmp_path / 'missing'}", "en_XX")
    with pytest.raises(UserError, match="bad template field 'code'"):
        load_task(f"hf:{xnli}:{{code}}", "en_XX")
    with pytest.raises(TransferTaskError, match="the same config for every language"):
        load_task(f"hf:{xnli}:en", "en_XX")
    import datasets

    unlabelled = datasets.load_dataset(str(xnli), "en")
    unlabelled["validation"] = unlabelled["validation"].map(lambda row: {"label": -1})
    folder = tmp_path / "unlabelled"
    for split, rows in unlabelled.items():
        rows.to_parquet(str(folder / "en" / f"{split}-00000-of-00001.parquet"))
    (folder / "README.md").write_text((xnli / "README.md").read_text())
    with pytest.raises(TransferTaskError, match=r"en/validation row 0: unlabelled \(label -1\)"):
        load_task(f"hf:{folder}", "en_XX")


def test_an_hf_folder_hashes_its_files_and_names_a_garbage_data_file(xnli, tmp_path):
    copy = shutil.copytree(xnli, tmp_path / "xnli")
    first = load_task(f"hf:{copy}", "en_XX", ["de_DE"]).content_hash
    assert load_task(f"hf:{xnli}", "en_XX", ["de_DE"]).content_hash == first  # moved: the same
    readme = copy / "README.md"
    readme.write_text(readme.read_text().replace("A local", "A relabelled local"))
    assert load_task(f"hf:{copy}", "en_XX", ["de_DE"]).content_hash != first
    garbage = copy / "de" / "test-00000-of-00001.parquet"
    garbage.write_bytes(b"not parquet\n" * 64)
    with pytest.raises(TransferTaskError, match=rf"cannot load config 'de': {garbage} \(test "
                                                r"split\) is not a readable parquet file"):
        load_task(f"hf:{copy}", "en_XX", ["de_DE"])


@pytest.mark.parametrize("value", ["hf:/data/x y/xnli:{iso}", "a'b\\c", "ends\\", "q\\'q",
                                   "x,y=[1]"])
def test_quoted_override_values_compose_back_unchanged(value):
    from hydra import compose, initialize_config_dir

    from xmod_pretrain.config import CONF_DIR, quoted, register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", ["+exp=transfer", f"transfer.task={quoted(value)}"])
    assert cfg.transfer.task == value
