"""Add-language: grow a trained run by new languages whose modules alone are trained.

X-MOD's promise is that a language added after pre-training costs the others nothing. Here that
is exact: the source run's weights are loaded as they are, every parameter that is not a new
language's module is frozen (``requires_grad=False``, so it never reaches the optimizer), and the
new languages train on their own text only, tokenized with the source run's tokenizer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from data_prep.sources import CORPUS_DIR
from xmod_core.errors import UserError
from xmod_core.languages import (
    check_language_code,
    check_language_list,
    language_index,
    same_language,
)
from xmod_core.shards import is_prepared, read_manifest
from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.checkpoint.language_files import InheritedFiles, language_manifest
from xmod_pretrain.config import Config
from xmod_pretrain.data.masking import Masker
from xmod_pretrain.data.prepared import ensure_prepared
from xmod_pretrain.interop import is_hf_folder, open_hf_folder
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import TIED, XmodForMaskedLM, as_language, language_of_parameter
from xmod_pretrain.recipes.add_language.config import AddLanguageConfig
from xmod_pretrain.recipes.base import Recipe, train_and_valid, valid_sets
from xmod_pretrain.runs.records import RunCheckpoint, check_own_run_dir, open_run, same_path
from xmod_pretrain.schema import ConfigError
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.metrics import perplexity
from xmod_pretrain.training.trainer import Trainer
from xmod_pretrain.vocabulary.growth import (
    MAX_RISE,
    GrownVocabulary,
    grow_vocabulary,
    old_language_contexts,
    report_bits_per_byte,
    report_old_languages,
    with_grown_model,
    with_new_rows,
)
from xmod_pretrain.vocabulary.split_model import split_vocabulary

BUNDLED_TEXT = CORPUS_DIR / "udhr"  # UDHR text of yo_NG and the demo languages


class AddLanguageError(UserError, ValueError):
    """A post-hoc request that cannot be carried out; nothing has been written."""


@dataclass
class AddLanguagePlan:
    source: RunCheckpoint
    new_languages: list[str]
    model_cfg: ModelConfig          # the source architecture with the new languages appended
    grown: GrownVocabulary | None = None  # --extend-vocab: set when the data is prepared


def plan_add_language(cfg: Config, info: DistInfo) -> AddLanguagePlan:
    """Check the request against the source run before anything is written."""
    req = cfg.add_language
    source = open_source(req.source_run or cfg.init_from)
    if Path(cfg.run_dir).resolve() == source.run_dir.resolve():
        raise AddLanguageError(f"--out {cfg.run_dir} is the source run: the source is read "
                               "only; pick a new directory")
    new = check_language_list(req.languages, "add_language.languages")
    if not new:
        raise AddLanguageError("add_language.languages is empty: name at least one (--lang yo_NG)")
    check_own_run_dir(cfg, info, "--out", f"an add-language run of {', '.join(new)} from "
                      f"{source.run_dir}", added_run_request)
    check_text(req)
    check_no_second_code(new, source.languages, source.run_dir)
    existing = [lang for lang in new if lang in source.languages]
    if existing and not req.overwrite:
        raise AddLanguageError(f"{', '.join(existing)} already in {source.run_dir} (languages: "
                               f"{', '.join(source.languages)}){never_trained(source, existing)}; "
                               "pass --overwrite to retrain")
    check_init(req.init, source.languages)
    if req.extend_vocab is not None and existing:
        raise AddLanguageError(f"--extend-vocab with --overwrite: {existing[0]} is in "
                               f"{source.run_dir} already; grow the vocabulary when the "
                               "language is first added")
    grown = source.languages + [lang for lang in new if lang not in source.languages]
    model_cfg = dataclasses.replace(source.config.model, languages=grown)
    return AddLanguagePlan(source=source, new_languages=new, model_cfg=model_cfg)


def never_trained(source: RunCheckpoint, languages: list[str]) -> str:
    """``, though its pre-training never trained ...`` for those of ``languages`` that the run's
    model holds but its explicit ``data.languages`` left out (their modules are as initialised)."""
    chosen = source.config.data.languages
    idle = [lang for lang in languages if chosen and lang not in chosen]
    if not idle:
        return ""
    return (f", though its pre-training never trained {', '.join(idle)}: a model takes every "
            "language of its data folder, and data.languages only chose which to train")


def check_no_second_code(new: list[str], languages: list[str], run_dir: Path) -> None:
    """Refuse a language the source has under its other code form (yor_Latn for yo_NG): a
    second module for one language would split its data's training from its evaluation."""
    for lang in new:
        other = same_language(lang, languages)
        if other is not None:
            raise AddLanguageError(f"--lang {lang} is {other} of {run_dir}, the same language "
                                   f"in the model's code form: use --lang {other} (with "
                                   "--overwrite to retrain it)")


def added_run_request(cfg: Config) -> dict[str, object]:
    """What makes an add-language run what it is: a resumed one must ask the same."""
    req = cfg.add_language
    return {"--from": same_path(req.source_run or cfg.init_from),
            "--lang": list(req.languages), "--text": same_path(req.text), "--init": req.init,
            "--extend-vocab": req.extend_vocab,
            "--init-vocab": req.init_vocab if req.extend_vocab is not None else None}


def open_source(path: str | None) -> RunCheckpoint:
    """The model to grow: a run's latest checkpoint, or a transformers X-MOD folder."""
    if path is None:
        raise AddLanguageError("add_language needs a source: add_language.source_run (--from RUN) "
                               "or init_from=PATH (a transformers X-MOD folder)")
    return open_hf_folder(path) if is_hf_folder(path) else open_run(path)


def check_init(init: str, languages: list[str]) -> list[str]:
    """The languages an ``init`` spec copies from (empty for ``random``)."""
    kind, _, arg = init.partition(":")
    if init == "random":
        return []
    if kind not in ("copy", "avg") or not arg:
        raise AddLanguageError(f"add_language.init={init!r}: use random, copy:LANG or avg:L1+L2")
    donors = arg.split("+")
    if kind == "copy" and len(donors) != 1:
        raise AddLanguageError(f"add_language.init={init!r}: copy takes one language")
    unknown = [lang for lang in donors
               if check_language_code(lang, "add_language.init") not in languages]
    if unknown:
        raise AddLanguageError(f"add_language.init={init!r}: the source run has no "
                               f"{', '.join(unknown)} (it has {', '.join(languages)})")
    return donors


def check_text(req: AddLanguageConfig) -> None:
    """The new languages' text exists and fits the request (checked before anything is written)."""
    if req.text is None:
        bundled = sorted(path.name.removesuffix(".txt.xz")
                         for path in BUNDLED_TEXT.glob("*.txt.xz"))
        missing = [lang for lang in req.languages if lang not in bundled]
        for lang in missing:
            other = same_language(lang, bundled)
            if other is not None:
                raise AddLanguageError(f"no bundled text for {lang}: the bundled text calls that "
                                       f"language {other}; use --lang {other}, or pass --text PATH")
        if missing:
            raise AddLanguageError(f"no bundled text for {', '.join(missing)}: pass --text PATH")
        return
    path = Path(req.text)
    if not path.exists():
        raise AddLanguageError(f"--text {path} does not exist")
    if path.is_file() and path.suffix != ".json" and len(req.languages) != 1:
        raise AddLanguageError(f"--text {path} is one file: give a folder of <code>.txt "
                               "files (or a JSON manifest) for several languages")


def text_source(req: AddLanguageConfig) -> str:
    """What data_prep reads for the new languages (``check_text`` has passed): the user's text
    (one file of the one new language, a folder, a JSON manifest), or the bundled UDHR."""
    return f"bundled:{BUNDLED_TEXT.name}" if req.text is None else req.text


def build_grown_model(plan: AddLanguagePlan, cfg: Config) -> XmodForMaskedLM:
    """The source model with new modules (initialised per ``add_language.init``) and, with a
    grown vocabulary, new rows (per ``add_language.init_vocab``); only they are trainable."""
    req, model_cfg = cfg.add_language, cfg.model
    model = XmodForMaskedLM(model_cfg)
    weights = plan.source.weights()
    if plan.grown is not None:
        weights = with_new_rows(weights, plan.grown, plan.source.tokenizer, req.init_vocab,
                                model_cfg.initializer_range, cfg.train.seed)
    new_keys = {key for key in model.state_dict() if language_of_parameter(key) in plan.new_languages}
    kept = {key: value for key, value in weights.items() if key not in new_keys}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    expected_missing = new_keys | set(TIED)
    if unexpected or set(missing) - expected_missing:
        raise AddLanguageError(f"{plan.source.path} does not fit its own config: missing "
                               f"{sorted(set(missing) - expected_missing)}, unexpected {unexpected}")
    donors = check_init(req.init, plan.source.languages)
    for lang in plan.new_languages:
        if donors:
            _init_from_donors(model, weights, lang, donors)
    for name, param in model.named_parameters():
        param.requires_grad = language_of_parameter(name) in plan.new_languages
    if plan.grown is None:
        return model
    old = source_validation(plan)
    contexts = None if old is None else old_language_contexts(
        cfg, model, *old, plan.source.config.model.vocab_size)
    # The hinge starts at half the promise: the sample is training text, the promise is on valid.
    return split_vocabulary(model, plan.grown.count, contexts, req.vocab_penalty, MAX_RISE / 2)


def _init_from_donors(model: XmodForMaskedLM, weights: dict[str, torch.Tensor], lang: str,
                      donors: list[str]) -> None:
    """Set ``lang``'s modules to the mean of the donors' (a copy when there is one donor)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if language_of_parameter(name) == lang:
                sources = [weights[as_language(name, donor)] for donor in donors]
                param.copy_(torch.stack(sources).mean(dim=0))


def source_validation(plan: AddLanguagePlan) -> tuple[str, list[str]] | None:
    """The source run's data folder and languages, to validate the old languages beside the new
    (when the folder is still there and was made with the same tokenizer)."""
    data_dir = Path(plan.source.config.data.dir)
    if not is_prepared(data_dir):
        return None
    manifest = read_manifest(data_dir)
    if manifest["tokenizer"]["sha256"] != Tokenizer.from_file(plan.source.tokenizer).sha256:
        return None
    return str(data_dir), [lang for lang in manifest["languages"] if lang in plan.source.languages]


class AddLanguage(Recipe):
    """Grow ``add_language.source_run`` (or the ``init_from`` folder) by
    ``add_language.languages``: their shards are made with the source's tokenizer, only their
    modules train, and the source's languages are validated beside them."""

    shared_trains = False  # for MFU: every shared weight is frozen

    def __init__(self, cfg: Config, info: DistInfo):
        super().__init__(cfg, info)
        if cfg.data.shared_module is not None:
            raise ConfigError("data.shared_module is for pre-training: add-language gives each "
                              "new language modules of its own")
        self.plan = plan_add_language(cfg, info)

    def prepare(self) -> Config:
        cfg, plan = self.cfg, self.plan
        source = text_source(cfg.add_language)
        tokenizer = plan.source.tokenizer
        if cfg.add_language.extend_vocab is not None:
            plan.grown = grow_vocabulary(cfg, plan.source, source, self.info)
            tokenizer = plan.grown.tokenizer
        self.manifest = ensure_prepared(
            cfg.data.dir, source, info=self.info, tokenizer=tokenizer,
            languages=plan.new_languages, valid_fraction=cfg.data.valid_fraction,
            workers=cfg.data.prepare_workers, run_dir=cfg.run_dir,
            announce=f"preparing {', '.join(plan.new_languages)} from {source} with the "
                     f"{'grown ' if plan.grown else ''}tokenizer of {plan.source.run_dir}")
        # The source's vocabulary record goes on: a run grown from a grown run is of its base.
        cfg = dataclasses.replace(cfg, model=plan.model_cfg, vocab=plan.source.config.vocab)
        return cfg if plan.grown is None else with_grown_model(cfg, plan.grown)

    def build_data(self, cfg: Config):
        sampler, valid = train_and_valid(cfg, self.info, self.manifest)
        source = source_validation(self.plan)
        if source:  # the old languages beside the new: their loss must not move
            # Masked as the source run masks them (its ids), with <mask> where it is now.
            masker = Masker(cfg.data.masking, self.plan.source.config.model.vocab_size,
                            mask_id=cfg.model.vocab_size - 1)
            valid.update(valid_sets(cfg, *source, masker))
        return sampler, valid

    def build_model(self, cfg: Config) -> XmodForMaskedLM:
        return build_grown_model(self.plan, cfg)

    def inherited_languages(self) -> InheritedFiles | None:
        """The source's languages but the new ones: frozen, so their files stay the source's."""
        source = self.plan.source
        manifest = language_manifest(source.path)  # None: a transformers folder, an old layout
        if manifest is None:
            return None
        return InheritedFiles(source.path, {code: entry for code, entry in manifest.items()
                                            if code not in self.plan.new_languages})

    def after_training(self, trainer: Trainer) -> None:
        """Each new language's valid perplexity through the best existing language's modules:
        what the new modules must beat. The candidates are the languages the source run trained
        on (its data folder's), when it is still there: a run of 2,000 registered languages
        need not be scored through modules that never trained."""
        languages, new = trainer.languages, self.plan.new_languages
        old = [lang for lang in languages if lang not in new]
        trained = source_validation(self.plan)
        candidates = [lang for lang in old if trained is None or lang in trained[1]] or old
        for lang in new:
            via = {other: trainer.evaluate(trainer.valid[lang], language_index(languages, other))
                   for other in candidates}
            best = min(via, key=via.get)
            own = trainer.evaluate(trainer.valid[lang])
            record = {"step": trainer.step, "split": "transfer", "language": lang, "own": own,
                      "best_existing": best, "via": via}
            trainer.metrics.log(record, f"{lang}: ppl {perplexity(own):.2f} with its own modules, "
                                        f"{perplexity(via[best]):.2f} through {best}'s (the best "
                                        f"of {len(candidates)} existing)")
        report_bits_per_byte(trainer, self.tokenizer(trainer.cfg), new)
        if self.plan.grown is not None:
            report_old_languages(trainer, self.plan.grown, [l for l in old if l in trainer.valid])


RECIPE = AddLanguage
