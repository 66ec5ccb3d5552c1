"""One language's modules as a file of its own: save it, load it into a run, or remove a language.

A language's bottleneck modules are all that differs between languages, so they move between runs
that share a base: every other weight, the architecture and the tokenizer. ``base_identity``
hashes exactly that; a module file records the identity of the run it was saved from, and loading
it into a run of another base is refused.

A module file is a pair::

    <lang>.safetensors   the language's tensors, fp32, keyed per layer: ``layer.{i}.dense1.weight``
                         stands for the run's
                         ``roberta.encoder.layer.{i}.output.adapter_modules.{lang}.dense1.weight``
    <lang>.json          format_version, language, base_identity, architecture, source_run, step,
                         sha256 (of the .safetensors file), pieces

A language whose vocabulary grew (``add-language --extend-vocab``) carries its pieces too: their
text and scores in ``pieces``, their embedding rows and bias entries as ``vocabulary.embeddings``
and ``vocabulary.bias``. Loading such a file appends the pieces after the run's last piece (and
the rows before its ``<mask>``), wherever that is: the run's own ids never move. Removing a
language keeps its pieces, for the same reason; loading its module back takes those ids again.

The keys carry no language code, so a module can be installed under another code. Loading and
removing write a new run (a weights-only checkpoint, ``runs.write_run``); the source is only read.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from xmod_core.atomic import atomic_path, file_sha256, follow_umask, write_text
from xmod_core.errors import UserError
from xmod_core.languages import (
    LanguageCodeError,
    check_language_code,
    other_form_hint,
    same_language,
)
from xmod_core.outputs import check_new_run_dir, inside_checkpoints
from xmod_core.shards import TOKENIZER_FILE, is_prepared, read_manifest
from xmod_pretrain.config import Config
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import (
    TIED,
    language_of_parameter,
    language_parameter,
    split_language_parameter,
)
from xmod_pretrain.runs.records import RunCheckpoint, default_source_run, open_run, write_run
from xmod_pretrain.vocabulary.config import AddedPieces, VocabularyConfig
from xmod_pretrain.vocabulary.pieces import (
    SPACE,
    ExtensionError,
    extend_tokenizer,
    read_model,
    vocabulary_characters,
)
from xmod_pretrain.vocabulary.split_model import BIAS, EMBEDDINGS, grow_rows

FORMAT_VERSION = 1
# state_dict keys that alias another tensor (the decoder is tied to the word embeddings and to
# lm_head.bias); model.safetensors leaves them out, a state_dict has them.
# ModelConfig fields that shape training, not the function the weights compute: runs that differ
# only in them share a base. Any other field (one added later too) is part of the identity.
NOT_IDENTITY = frozenset({"languages", "hidden_dropout_prob", "attention_probs_dropout_prob",
                          "initializer_range"})
# What a module's own shape and placement depend on; recorded in its .json and named on mismatch.
MODULE_ARCHITECTURE = ("hidden_size", "num_hidden_layers", "adapter_reduction_factor",
                       "ln_before_adapter", "adapter_layer_norm", "adapter_reuse_layer_norm")
_MODULE_KEY = re.compile(r"^layer\.(\d+)\.(.+)$")
VOCAB_ROWS, VOCAB_BIAS = "vocabulary.embeddings", "vocabulary.bias"  # a language's added rows
# What save-language writes into a module's .json, with the type each entry must have.
META_TYPES = {"format_version": int, "language": str, "base_identity": str, "architecture": dict,
              "source_run": str, "step": int, "sha256": str, "pieces": list}
OPTIONAL_META = frozenset({"pieces"})  # absent from files written before pieces were carried
REWRITE = "save the module again with save-language"


class LanguageModuleError(UserError, ValueError):
    """A module file or a request that cannot be carried out; nothing has been written."""


@dataclass
class ModuleFile:
    """A module file read back: its .json and its tensors (module-file keys)."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def language(self) -> str:
        return self.meta["language"]

    @property
    def pieces(self) -> list[tuple[str, float]]:
        """The language's own vocabulary pieces, (text, score) in id order; often none."""
        return [(text, score) for text, score in self.meta.get("pieces", [])]

    @property
    def module(self) -> dict[str, torch.Tensor]:
        """The module's tensors without the vocabulary rows."""
        return {k: t for k, t in self.tensors.items() if k not in (VOCAB_ROWS, VOCAB_BIAS)}


# ---- identity ---------------------------------------------------------------------------------

def base_identity(weights: dict[str, torch.Tensor], model_cfg: ModelConfig,
                  tokenizer_sha256: str) -> str:
    """sha256 of everything that is not a language module: the shared tensors (names, dtypes,
    shapes, bytes, in name order), the architecture (ModelConfig less ``NOT_IDENTITY``) and the
    tokenizer. A run and the same run with languages added or removed have the same identity."""
    digest = hashlib.sha256(b"xmod-base-identity/1")
    architecture = {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(ModelConfig)
                    if f.name not in NOT_IDENTITY}
    _add(digest, json.dumps(architecture, sort_keys=True).encode())
    _add(digest, tokenizer_sha256.encode())
    for name in sorted(weights):
        if language_of_parameter(name) is not None or name in TIED:
            continue
        tensor = weights[name].detach().to("cpu").contiguous()
        _add(digest, f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        _add(digest, tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _add(digest: Any, data: Any) -> None:
    # Length-prefixed, so no two different sequences of records feed the hash the same bytes.
    digest.update(memoryview(data).nbytes.to_bytes(8, "little"))
    digest.update(data)


def run_identity(run: RunCheckpoint, weights: dict[str, torch.Tensor]) -> str:
    """``base_identity`` of a checkpoint whose ``weights`` are already loaded. Of a run whose
    vocabulary grew, that of its base: the pre-training rows, vocabulary size and tokenizer
    (the appended pieces are their languages' own, as the modules are)."""
    vocab = run.config.vocab
    if vocab.base_size is None:
        return base_identity(weights, run.config.model, run.tokenizer_sha256())
    first = vocab.base_size - 1  # the base's <mask>, moved to the last row
    base = {**weights, **{key: torch.cat([weights[key][:first], weights[key][-1:]])
                          for key in (EMBEDDINGS, BIAS)}}
    model = dataclasses.replace(run.config.model, vocab_size=vocab.base_size)
    return base_identity(base, model, vocab.base_tokenizer_sha256)


# ---- keys -------------------------------------------------------------------------------------

def module_tensors(weights: dict[str, torch.Tensor], lang: str) -> dict[str, torch.Tensor]:
    """``lang``'s tensors of a run's weights, under module-file keys (``layer.0.dense1.weight``)."""
    tensors = {}
    for name, tensor in weights.items():
        if language_of_parameter(name) != lang:
            continue
        found = split_language_parameter(name)
        if found is None:
            raise LanguageModuleError(f"{name} belongs to {lang} but is not a layer's module")
        tensors[f"layer.{found[0]}.{found[2]}"] = tensor
    return tensors


def run_key(key: str, lang: str) -> str:
    """The name in a run of module-file key ``key`` installed as language ``lang``."""
    found = _MODULE_KEY.match(key)
    if found is None:
        raise LanguageModuleError(f"{key!r} is not a module-file key (layer.<i>.<name>)")
    return language_parameter(found[1], lang, found[2])


# ---- save / load / remove ---------------------------------------------------------------------

def save_language_module(run_dir: str | Path, lang: str, out_dir: str | Path,
                         step: int | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<lang>.safetensors`` and ``<out_dir>/<lang>.json`` from ``run_dir``'s
    latest checkpoint (or that of ``step``); return both paths. Existing files are refused."""
    out_dir = Path(out_dir)
    if inside_checkpoints(out_dir) is not None:
        raise LanguageModuleError(f"--out {out_dir} is inside the checkpoints folder of a run: "
                                  "write module files somewhere else")
    run = open_run(run_dir, step, languages=[lang])
    _require_language(run, lang)
    tensors_path, meta_path = out_dir / f"{lang}.safetensors", out_dir / f"{lang}.json"
    for path in (tensors_path, meta_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists: pick another --out")
    weights = run.weights(languages=[lang])  # the shared weights and lang's module alone
    tensors, pieces = module_tensors(weights, lang), []
    added = next((entry for entry in run.config.vocab.added if entry.language == lang), None)
    if added is not None:
        ids = slice(added.first_id, added.first_id + added.count)
        tensors |= {VOCAB_ROWS: weights[EMBEDDINGS][ids], VOCAB_BIAS: weights[BIAS][ids]}
        model = read_model(run.tokenizer)  # piece i is id i + 1
        pieces = [[p.piece, p.score] for p in model.pieces[ids.start - 1:ids.stop - 1]]
    with atomic_path(tensors_path) as tmp:
        save_file(tensors, str(tmp))
        follow_umask(tmp)
    meta = {
        "format_version": FORMAT_VERSION,
        "language": lang,
        "base_identity": run_identity(run, weights),
        "architecture": {name: getattr(run.config.model, name) for name in MODULE_ARCHITECTURE},
        "source_run": str(run.path.resolve()),
        "step": run.step,
        "sha256": file_sha256(tensors_path),
        "pieces": pieces,
    }
    write_text(meta_path, json.dumps(meta, indent=1) + "\n")  # last: the pair is complete
    return tensors_path, meta_path


def read_module(module_file: str | Path) -> ModuleFile:
    """A module file and the .json beside it, checked against each other."""
    path = Path(module_file)
    meta_path = path.with_suffix(".json")
    if path.suffix != ".safetensors":
        raise LanguageModuleError(f"{path} is not a module file: give the <lang>.safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"module file {path} does not exist")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: a module file needs the .json that "
                                "save-language writes beside it")
    meta = _read_meta(meta_path)
    if file_sha256(path) != meta["sha256"]:
        raise LanguageModuleError(f"{path} does not match the sha256 in {meta_path}: the file was "
                                  "changed or the two come from different saves")
    try:
        tensors = load_file(str(path))
    except SafetensorError as err:  # a file saved with its damage: the sha256 agrees
        raise LanguageModuleError(f"{path} is not a readable safetensors file ({err}): "
                                  f"{REWRITE}") from None
    module = ModuleFile(path=path, meta=meta, tensors=tensors)
    _check_vocabulary_rows(module, meta_path)
    return module


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """A module's .json, refused in one line naming it unless it holds what save-language
    writes: every entry of ``META_TYPES`` of its type, a language code, (text, score) pieces."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise LanguageModuleError(f"{meta_path} is not UTF-8 text (byte {err.start}): "
                                  f"{REWRITE}") from None
    except json.JSONDecodeError as err:
        raise LanguageModuleError(f"{meta_path} is not valid JSON ({err.msg} at line {err.lineno} "
                                  f"column {err.colno}): {REWRITE}") from None
    if not isinstance(meta, dict):
        raise LanguageModuleError(f"{meta_path} holds a JSON {type(meta).__name__}, not the object "
                                  f"save-language writes: {REWRITE}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise LanguageModuleError(f"{meta_path} has format_version {meta.get('format_version')!r}; "
                                  f"this version reads {FORMAT_VERSION}")
    wrong = [f"{key} {'missing' if key not in meta else f'is not a {kind.__name__}'}"
             for key, kind in META_TYPES.items()
             if not isinstance(meta.get(key), kind) and not (key in OPTIONAL_META
                                                            and key not in meta)]
    pieces = meta.get("pieces", [])
    if isinstance(pieces, list) and not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
            and isinstance(p[1], (int, float)) for p in pieces):
        wrong.append("pieces are not [text, score] pairs")
    if wrong:
        raise LanguageModuleError(f"{meta_path} is not a module description: {'; '.join(wrong)}; "
                                  f"{REWRITE}")
    try:
        check_language_code(meta["language"])
    except LanguageCodeError as err:
        raise LanguageModuleError(f"{meta_path}: {err}; {REWRITE}") from None
    return meta


def _check_vocabulary_rows(module: ModuleFile, meta_path: Path) -> None:
    """One embedding row (of the module's width) and one bias entry per piece of its .json,
    and none without pieces."""
    count, width = len(module.pieces), module.meta["architecture"].get("hidden_size")
    expected = {VOCAB_ROWS: (count, width), VOCAB_BIAS: (count,)} if count else {}
    found = {key: tuple(module.tensors[key].shape) for key in (VOCAB_ROWS, VOCAB_BIAS)
             if key in module.tensors}
    if found != expected:
        raise LanguageModuleError(f"{module.path} holds {_shapes(found)} for the {count} "
                                  f"vocabulary pieces of {meta_path}, not {_shapes(expected)}; "
                                  f"{REWRITE}")


def _shapes(tensors: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{key} {list(shape)}" for key, shape in tensors.items()) or "no rows"


def load_language_module(run_dir: str | Path, module_file: str | Path, out_dir: str | Path,
                         overwrite: bool = False, lang: str | None = None) -> Path:
    """Write a new run at ``out_dir``: ``run_dir``'s latest weights plus the module of
    ``module_file``, appended as a new language (``lang``, default the language it was saved
    from), or replacing that language's modules in place with ``overwrite``. Return ``out_dir``.

    Refused when the run's base identity differs from the module's (it belongs to another base
    model), when the run has the language already and ``overwrite`` is off, or when ``out_dir``
    exists and is not empty. A module with vocabulary pieces takes the ids that hold them in the
    run already (its language was removed from the run, or is the one it replaces), else appends
    them.
    """
    check_new_run_dir(out_dir)
    module = read_module(module_file)
    lang = check_language_code(lang or module.language, "--lang")
    run = open_run(run_dir)
    if lang in run.languages and not overwrite:
        raise LanguageModuleError(f"{run.run_dir} already has {lang}: pass --overwrite to replace "
                                  "its modules, or --lang to load the module under another code")
    if same_language(lang, run.languages):  # one language, two modules: never what is meant
        raise LanguageModuleError(f"{run.run_dir} has {lang} under its other code"
                                  f"{other_form_hint(lang, run.languages)} (with --overwrite to "
                                  "replace its modules)")
    weights = run.weights()
    _check_same_base(module, run, run_identity(run, weights))
    _check_layout(module, module_tensors(weights, run.languages[0]))
    grown = {name: t for name, t in weights.items() if language_of_parameter(name) != lang}
    grown.update({run_key(key, lang): t for key, t in module.module.items()})
    languages = run.languages if lang in run.languages else [*run.languages, lang]
    config = _with_languages(run.config, languages, _restored_data_languages(run, lang))
    state = _derived_state(run, "load-language", lang, module=str(module.path.resolve()))
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = run.tokenizer
        held = _held_pieces(run, module) if module.pieces else None
        if held is not None:
            config, grown = _into_held_pieces(run, config, grown, module, lang, held)
        elif module.pieces:
            if lang in run.languages:
                raise LanguageModuleError(f"{module.path} carries {len(module.pieces)} vocabulary "
                                          f"pieces and {run.run_dir} has {lang} already: remove "
                                          "the language first, or load it under another --lang")
            tokenizer = Path(scratch) / TOKENIZER_FILE
            config, grown = _with_pieces(run, config, grown, module, lang, tokenizer)
        write_run(out_dir, config, tokenizer, grown, run.step, state)
    return Path(out_dir)


def _restored_data_languages(run: RunCheckpoint, lang: str) -> list[str]:
    """``run``'s ``data.languages`` with ``lang``, a language loaded into it, given its place
    back when the list is explicit (empty: every language of the data folder, ``lang`` among
    them if it is there). Its place is the one remove-language took it from, when ``run`` is that
    removal; else the one the data folder's order gives it, if the folder holds its text. A
    language removed and loaded back so trains and validates again, on the batches it had."""
    data = run.config.data
    if not data.languages or lang in data.languages or lang in run.languages:
        return data.languages
    origin = run.trainer_state.get("derived_from", {})
    if origin.get("operation") == "remove-language" and origin.get("language") == lang and \
            lang in origin.get("data_languages", []):
        return [code for code in origin["data_languages"] if code in data.languages or code == lang]
    if not is_prepared(data.dir) or lang not in read_manifest(data.dir)["languages"]:
        return data.languages
    order = list(read_manifest(data.dir)["languages"])
    after = [at for at, code in enumerate(data.languages)
             if code in order and order.index(code) > order.index(lang)]
    at = after[0] if after else len(data.languages)
    return [*data.languages[:at], lang, *data.languages[at:]]


def _held_pieces(run: RunCheckpoint, module: ModuleFile) -> AddedPieces | None:
    """The run's entry of added pieces whose ids hold exactly the module's pieces (text and
    score): they were learned for the module's language and stayed when it was removed."""
    pieces = read_model(run.tokenizer).pieces  # piece i is id i + 1
    for entry in run.config.vocab.added:
        held = pieces[entry.first_id - 1:entry.first_id - 1 + entry.count]
        if [(p.piece, p.score) for p in held] == module.pieces:
            return entry
    return None


def _into_held_pieces(run: RunCheckpoint, config: Config, weights: dict[str, torch.Tensor],
                      module: ModuleFile, lang: str, held: AddedPieces
                      ) -> tuple[Config, dict[str, torch.Tensor]]:
    """The run's config and weights with the module's rows and bias entries at the ids that
    hold its pieces already, which become ``lang``'s; the tokenizer stays as it is. Refused
    while another language of the run owns them: both would need their own rows there."""
    if held.language != lang and held.language in run.languages:
        raise LanguageModuleError(
            f"{module.path}: its {held.count} pieces are spelled by {run.run_dir}'s vocabulary "
            f"already, as {held.language}'s (ids {held.first_id}..{held.first_id + held.count - 1})"
            f": two languages cannot share those rows; load it as --lang {held.language} "
            "--overwrite to replace that language")
    ids = slice(held.first_id, held.first_id + held.count)
    rows, bias = weights[EMBEDDINGS].clone(), weights[BIAS].clone()
    rows[ids] = module.tensors[VOCAB_ROWS].to(rows.dtype)
    bias[ids] = module.tensors[VOCAB_BIAS].to(bias.dtype)
    added = [AddedPieces(lang, entry.first_id, entry.count) if entry is held else entry
             for entry in config.vocab.added]
    vocab = dataclasses.replace(config.vocab, added=added)
    return dataclasses.replace(config, vocab=vocab), {**weights, EMBEDDINGS: rows, BIAS: bias}


def _with_pieces(run: RunCheckpoint, config: Config, weights: dict[str, torch.Tensor],
                 module: ModuleFile, lang: str, tokenizer: Path
                 ) -> tuple[Config, dict[str, torch.Tensor]]:
    """The run's config, weights and tokenizer (written to ``tokenizer``) with the module's
    pieces appended, refused where a piece could match the run's own languages' text."""
    vocabulary = vocabulary_characters(read_model(run.tokenizer))
    covered = [text for text, _ in module.pieces if not set(text) - vocabulary - {SPACE}]
    if covered:
        raise LanguageModuleError(
            f"{module.path}: the pieces {', '.join(covered[:10])} are spelled by {run.run_dir}'s "
            "vocabulary already: appended, they would change how its languages' text tokenizes")
    try:
        extend_tokenizer(run.tokenizer, module.pieces, tokenizer)
    except ExtensionError as err:
        raise LanguageModuleError(f"{module.path}: {err}") from None
    size, vocab = config.model.vocab_size, config.vocab
    weights = {**weights, EMBEDDINGS: grow_rows(weights[EMBEDDINGS], module.tensors[VOCAB_ROWS]),
               BIAS: grow_rows(weights[BIAS], module.tensors[VOCAB_BIAS])}
    grown_vocab = VocabularyConfig(
        base_size=vocab.base_size or size,
        base_tokenizer_sha256=vocab.base_tokenizer_sha256 or run.tokenizer_sha256(),
        added=[*vocab.added, AddedPieces(lang, first_id=size - 1, count=len(module.pieces))])
    model = dataclasses.replace(config.model, vocab_size=size + len(module.pieces))
    return dataclasses.replace(config, model=model, vocab=grown_vocab), weights


def remove_language(run_dir: str | Path, lang: str, out_dir: str | Path) -> Path:
    """Write a new run at ``out_dir``: ``run_dir``'s latest weights without ``lang``'s modules and
    without ``lang`` in its languages. Languages after it move down one index in the new run (its
    languages.json says so); names, not indices, key the modules. Vocabulary pieces learned for
    ``lang`` stay, so that no id moves. Return ``out_dir``."""
    check_new_run_dir(out_dir)
    run = open_run(run_dir)
    _require_language(run, lang)
    if len(run.languages) == 1:
        raise LanguageModuleError(f"{lang} is the only language of {run.run_dir}; a model keeps "
                                  "at least one")
    kept = {name: t for name, t in run.weights().items() if language_of_parameter(name) != lang}
    config = _with_languages(run.config, [code for code in run.languages if code != lang])
    # Where lang stood among the data languages, for load-language to put it back there.
    state = _derived_state(run, "remove-language", lang, data_languages=run.config.data.languages)
    write_run(out_dir, config, run.tokenizer, kept, run.step, state)
    return Path(out_dir)


def _require_language(run: RunCheckpoint, lang: str) -> None:
    if lang not in run.languages:
        raise LanguageModuleError(f"{run.run_dir} has no language {lang!r}"
                                  f"{other_form_hint(lang, run.languages)}; its "
                                  f"{len(run.languages)}: {', '.join(run.languages)}")


def _check_same_base(module: ModuleFile, run: RunCheckpoint, identity: str) -> None:
    theirs = module.meta["base_identity"]
    if theirs == identity:
        return
    message = (f"{module.path} belongs to another base model: it was saved from base {theirs} "
               f"({module.meta['source_run']}), and {run.path} has base {identity}")
    saved = module.meta["architecture"]
    differ = [f"{name} {saved.get(name)!r} in the module, {getattr(run.config.model, name)!r} in "
              "the run" for name in MODULE_ARCHITECTURE
              if saved.get(name) != getattr(run.config.model, name)]
    if differ:
        message += "; architecture differs: " + ", ".join(differ)
    raise LanguageModuleError(message)


def _check_layout(module: ModuleFile, reference: dict[str, torch.Tensor]) -> None:
    """The module's tensors have the names, shapes and dtypes of the run's own modules."""
    layout = {key: (tuple(t.shape), t.dtype) for key, t in module.module.items()}
    expected = {key: (tuple(t.shape), t.dtype) for key, t in reference.items()}
    if layout != expected:
        wrong = sorted(set(layout.items()) ^ set(expected.items()), key=lambda item: item[0])
        raise LanguageModuleError(f"{module.path} does not have the run's module layout: "
                                  f"{', '.join(f'{k} {v}' for k, v in wrong[:6])}")


def _with_languages(config: Config, languages: list[str],
                    data_languages: list[str] | None = None) -> Config:
    """``config`` with these model languages and ``data_languages`` (default: its own); an
    explicit ``data.languages`` drops the others, so the derived config still resolves every
    training language to a module."""
    data = config.data
    chosen = data.languages if data_languages is None else data_languages
    data_langs = [code for code in chosen if code in languages]
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, languages=list(languages)),
        data=dataclasses.replace(data, languages=data_langs))


def _derived_state(run: RunCheckpoint, operation: str, lang: str, **extra: Any) -> dict[str, Any]:
    """The source's trainer state (step, sampler position) plus where the new run came from."""
    origin = {"run": str(run.path.resolve()), "step": run.step, "operation": operation,
              "language": lang, **extra}
    return {**run.trainer_state, "derived_from": origin}


# ---- command line -----------------------------------------------------------------------------

def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"xmod_pretrain {command}")
    source = "the run to read (default: runs/demo)"
    if command == "save-language":
        parser.description = "Save one language's modules as <lang>.safetensors + <lang>.json."
        parser.add_argument("--lang", required=True, help="the language to save, e.g. de_DE")
        parser.add_argument("--from", dest="source", help=source)
        parser.add_argument("--step", type=int, help="checkpoint step (default: latest)")
        parser.add_argument("--out", required=True, help="folder for the module file")
    elif command == "load-language":
        parser.description = "Write a new run: a run plus one saved language module."
        parser.add_argument("--module", required=True, help="<lang>.safetensors (its .json beside)")
        parser.add_argument("--from", dest="source", help=source)
        parser.add_argument("--out", required=True, help="the new run's directory (must not exist)")
        parser.add_argument("--lang", help="install under this code (default: the saved language)")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace the modules of a language the run already has")
    else:
        parser.description = "Write a new run: a run without one language's modules."
        parser.add_argument("--lang", required=True, help="the language to remove")
        parser.add_argument("--from", dest="source", help=source)
        parser.add_argument("--out", required=True, help="the new run's directory (must not exist)")
    return parser


def _run_command(command: str, args: argparse.Namespace) -> str:
    """Carry out ``command``; return the line that reports what was written."""
    source = Path(args.source) if args.source else default_source_run()
    if command == "save-language":
        tensors, meta = save_language_module(source, args.lang, args.out, args.step)
        size = tensors.stat().st_size / 1e6
        return f"saved {args.lang}'s modules of {source}: {tensors} ({size:.2f} MB), {meta}"
    if command == "load-language":
        out = load_language_module(source, args.module, args.out, args.overwrite, args.lang)
        change = f"+ {args.module}"
    else:
        out = remove_language(source, args.lang, args.out)
        change = f"without {args.lang}"
    return f"wrote {out}: {source} {change} (languages: {', '.join(open_run(out).languages)})"


def main(argv: list[str], command: str) -> int:
    """``xmod_pretrain {save,load,remove}-language ...``; exit status 0, or 1 with the problem on
    stderr (and nothing written)."""
    args = _parser(command).parse_args(argv)
    try:
        print(_run_command(command, args))
    except (UserError, OSError, ValueError) as err:  # paths, languages, bases, checkpoints
        print(f"xmod_pretrain {command}: error: {err}", file=sys.stderr)
        return 1
    return 0
