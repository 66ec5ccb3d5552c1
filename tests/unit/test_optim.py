"""The optimizer: one group per language, absent languages left alone unless asked."""

from __future__ import annotations

import copy
import dataclasses

import torch

from tests.unit.test_model import LANGUAGES, TINY, batch
from xmod_pretrain.model.xmod import XmodForMaskedLM, language_of_parameter
from xmod_pretrain.training.clipping import GlobalClip
from xmod_pretrain.training.config import ModuleState, OptimConfig
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.language_store import LanguageStore
from xmod_pretrain.training.optim import (
    build_optimizer,
    build_scheduler,
    lr_factor,
    parameter_groups,
)

CFG = OptimConfig(lr=1e-2, weight_decay=0.1)


def train_steps(model: XmodForMaskedLM, optimizer, langs: list[str]) -> None:
    """One optimizer step per language in ``langs``, each on a batch of that language only."""
    ids, _ = batch(padded=False)
    for lang in langs:
        torch.manual_seed(0)
        optimizer.present = frozenset({lang})
        model(ids, LANGUAGES.index(lang), torch.tensor([1, 4, 20]), torch.tensor([5, 6, 7])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def snapshot(model: XmodForMaskedLM) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed_languages(before: dict, model: XmodForMaskedLM) -> set[str | None]:
    """The languages (None: shared) that own a parameter that moved."""
    return {language_of_parameter(n) for n, p in model.named_parameters()
            if not torch.equal(before[n], p)}


def test_groups_hold_each_trainable_parameter_once_by_language() -> None:
    model = XmodForMaskedLM(TINY)
    for _, p in model.language_parameters("yo_NG"):
        p.requires_grad_(False)
    groups = parameter_groups(model.named_parameters(), CFG)
    grouped = [p for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) == len({id(p) for p in grouped})
    owner = {id(p): language_of_parameter(n) for n, p in model.named_parameters()}
    for group in groups:
        assert {owner[id(p)] for p in group["params"]} == {group["language"]}
        assert group["weight_decay"] == (0.0 if group["params"][0].ndim < 2 else CFG.weight_decay)
    assert {g["language"] for g in groups} == {None, "en_XX", "de_DE"}  # frozen yo_NG has none


def test_absent_languages_keep_weights_and_state_by_default() -> None:
    model = XmodForMaskedLM(TINY)
    optimizer = build_optimizer(model.named_parameters(), CFG)
    before = snapshot(model)
    train_steps(model, optimizer, ["de_DE", "de_DE"])
    assert changed_languages(before, model) == {None, "de_DE"}
    for _, p in model.language_parameters("en_XX") + model.language_parameters("yo_NG"):
        assert p not in optimizer.state  # no moments, no step count: nothing to drift


def test_update_absent_languages_steps_every_module() -> None:
    """fairseq's and DeepSpeed's behaviour: a zero gradient, so weight decay still moves them."""
    model = XmodForMaskedLM(TINY)
    optimizer = build_optimizer(model.named_parameters(), OptimConfig(**{**vars(CFG), "update_absent_languages": True}))
    before = snapshot(model)
    train_steps(model, optimizer, ["de_DE"])
    assert changed_languages(before, model) == {None, *LANGUAGES}


def test_skipping_equals_adamw_over_the_present_parameters() -> None:
    """A step with languages absent is exactly torch's AdamW over the others; a language that
    returns continues from its own step count (its bias correction is not skipped ahead)."""
    model = XmodForMaskedLM(TINY)
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(model.named_parameters(), CFG)
    train_steps(model, optimizer, ["de_DE", "de_DE", "en_XX"])

    def plain(langs: set) -> torch.optim.AdamW:
        groups = [dict(g, params=list(g["params"])) for g in parameter_groups(reference.named_parameters(), CFG)
                  if g["language"] in langs]
        return torch.optim.AdamW(groups, lr=CFG.lr, betas=tuple(CFG.betas), eps=CFG.eps, fused=True)

    shared = plain({None})
    de, en = plain({"de_DE"}), plain({"en_XX"})
    ids, _ = batch(padded=False)
    for lang, module in [("de_DE", de), ("de_DE", de), ("en_XX", en)]:
        torch.manual_seed(0)
        reference(ids, LANGUAGES.index(lang), torch.tensor([1, 4, 20]),
                  torch.tensor([5, 6, 7])).loss.backward()
        shared.step()
        module.step()
        reference.zero_grad()
    got, want = snapshot(model), snapshot(reference)
    for name in got:
        assert torch.equal(got[name], want[name]), name
    en_weight = model.language_parameters("en_XX")[0][1]
    assert optimizer.state[en_weight]["step"] == 1


def test_the_store_schedules_the_languages_it_steps_as_lambdalr_would() -> None:
    """The store sets the learning rate of the groups it steps only (a scheduler visits every
    registered language's each step); the rates are LambdaLR's, step for step and on resume."""
    cfg = OptimConfig(lr=1e-2, warmup_steps=2)
    model = XmodForMaskedLM(TINY)
    store = LanguageStore(model.detach_language_modules(), cfg, 6, DistInfo(0, 1, 0, 1),
                          torch.device("cpu"), GlobalClip(0.0))
    reference = build_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], cfg.lr),
                                cfg, 6)
    untouched = store.optimizer.groups_of(["en_XX"])
    for step in range(6):
        assert store.learning_rate() == reference.get_last_lr()[0], step
        for _, param in model.language_parameters("de_DE"):
            param.grad = torch.ones_like(param)
        store.reduce_gradients(["de_DE"])
        store.step(["de_DE"])
        assert {g["lr"] for g in store.optimizer.groups_of(["de_DE"])} == {
            reference.get_last_lr()[0]}
        reference.optimizer.step()
        reference.step()
    assert {g["lr"] for g in untouched} == {cfg.lr}  # never stepped, never visited
    store.resume_schedule(3)
    assert store.learning_rate() == cfg.lr * lr_factor(3, cfg, 6)


def paged_store(model: XmodForMaskedLM, module_state: str) -> LanguageStore:
    cfg = dataclasses.replace(CFG, module_state=ModuleState(module_state))
    return LanguageStore(model.detach_language_modules(), cfg, 6, DistInfo(0, 1, 0, 1),
                         torch.device("cpu"), GlobalClip(0.0))


def test_host_state_holds_a_steps_languages_on_the_device_and_trains_the_same() -> None:
    """optim.module_state=host: after each step's start only its languages and the next step's
    are off the host buffers (a validation's forward adds one), and every module weight and
    AdamW moment equals the device store's, step for step, a language paged out and back with
    its state included."""
    torch.manual_seed(0)
    on_device = XmodForMaskedLM(TINY)
    paged = copy.deepcopy(on_device)
    stores = paged_store(on_device, "device"), paged_store(paged, "host")
    pages = stores[1].pages
    host = {t.data_ptr() for buffers in pages.host.values() for t in buffers.values()}
    one_language = 3 * sum(p.numel() * 4 for _, p in stores[1].by_language["de_DE"])
    steps = ["de_DE", "en_XX", "en_XX", "de_DE", "yo_NG", "yo_NG", "de_DE", "en_XX"]
    ids, _ = batch(padded=False)
    for step, lang in enumerate(steps):
        upcoming = steps[step + 1:step + 2]
        for model, store in zip((on_device, paged), stores):
            store.begin_step([lang], upcoming)
            torch.manual_seed(step)
            model(ids, LANGUAGES.index(lang), torch.tensor([1, 4, 20]),
                  torch.tensor([5, 6, 7])).loss.backward()
            store.reduce_gradients([lang])
            store.step([lang])
        assert pages.resident == {lang, *upcoming}
        for code, params in stores[1].by_language.items():
            on_host = {param.data_ptr() in host for _, param in params}
            assert on_host == {code not in pages.resident}, (step, code)
        # weights, exp_avg and exp_avg_sq of at most two languages
        assert 0 < pages.device_bytes() <= 2 * one_language
        assert_same_module_state(*stores)
    stores[1].ensure("yo_NG")  # a validation's forward through a language of no step
    assert pages.resident == {"en_XX", "yo_NG"}
    assert_same_module_state(*stores)


def assert_same_module_state(a: LanguageStore, b: LanguageStore) -> None:
    """Every language's weights and AdamW state, as a checkpoint would write them."""
    a.changed, b.changed = set(LANGUAGES), set(LANGUAGES)
    mine, theirs = a.changed_state(), b.changed_state()
    assert mine.keys() == theirs.keys() == set(LANGUAGES)
    for lang, tensors in mine.items():
        assert tensors.keys() == theirs[lang].keys(), lang
        for key, value in tensors.items():
            assert torch.equal(value, theirs[lang][key]), key
