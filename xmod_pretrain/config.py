"""The run's typed configuration: each component's schema composed, registered with Hydra.

Hydra composes ``conf/`` against these schemas (each in its component's folder: model/config.py,
data/config.py, training/config.py, recipes/<kind>/config.py), so a misspelt key or a value of
the wrong type fails at start with a message that names it. The YAML is converted once, with
``OmegaConf.to_object``, into these dataclasses; the rest of the code never sees a DictConfig.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from xmod_core.errors import closest, did_you_mean
from xmod_pretrain.data.config import DataConfig
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.recipes.add_language.config import AddLanguageConfig
from xmod_pretrain.recipes.transfer.config import TransferConfig
from xmod_pretrain.schema import ConfigError, Schema
from xmod_pretrain.training.config import DeepSpeedConfig, LoggingConfig, OptimConfig, TrainConfig
from xmod_pretrain.vocabulary.config import VocabularyConfig

# The YAML tree these schemas type: package data, so an installed wheel finds it (the checkout's
# top-level conf/ links here).
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


# String choices are enums, so Hydra refuses a value outside them when it composes the config
# ("Invalid value 'fp16', expected one of [fp32, bf16]"); as str enums they compare equal to
# their names and are written to YAML and JSON as them.


class RunKind(str, Enum):
    """The kind of run, and so the recipe that builds its parts (``recipes/<kind>/recipe.py``)."""

    pretrain = "pretrain"
    add_language = "add_language"
    transfer = "transfer"


@dataclass
class Config(Schema):
    recipe: RunKind = RunKind.pretrain
    """pretrain, add_language (``xmod_pretrain add-language`` sets it, with add_language.*) or
    transfer (``xmod_pretrain transfer``, with transfer.*)."""
    name: str = "default"
    run_dir: str = "runs/${name}"
    """Checkpoints, metrics.jsonl, the resolved config. Named, never timestamped, so every rank
    and every requeue of a job agree on it."""
    init_from: Optional[str] = None
    """A transformers X-MOD folder (config.json, weights, sentencepiece.bpe.model) to start from:
    its architecture, language order, every weight and its tokenizer replace ``model``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    add_language: AddLanguageConfig = field(default_factory=AddLanguageConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    vocab: VocabularyConfig = field(default_factory=VocabularyConfig)

    def check_together(self, prefix: str) -> None:
        """The combinations across components; each component checked its own values first."""
        model, data, ds = self.model, self.data, self.deepspeed
        if self.recipe == RunKind.pretrain and self.add_language.languages:
            raise ConfigError(f"recipe={self.recipe.value} with add_language.languages="
                              f"{self.add_language.languages}: adding languages is "
                              "recipe=add_language with the languages named (xmod_pretrain "
                              "add-language --lang xx_YY)")
        total = self.optim.total_steps
        if total is not None and total < self.train.max_steps:
            raise ConfigError(f"optim.total_steps={total} is below train.max_steps="
                              f"{self.train.max_steps}: the steps after {total} would train at "
                              "learning rate 0; raise it, or set it to null (the schedule spans "
                              "train.max_steps)")
        # Real tokens take positions pad+1 .. pad+seq_len (RoBERTa's layout; model.position_ids).
        longest = model.max_position_embeddings - model.pad_token_id - 1
        if data.seq_len > longest:
            raise ConfigError(f"data.seq_len={data.seq_len} is not allowed: "
                              f"model.max_position_embeddings={model.max_position_embeddings} "
                              f"gives at most {longest} positions")
        if self.train.compile and ds.zero_stage == 3:
            raise ConfigError("train.compile=true with deepspeed.zero_stage=3 is not supported: "
                              "ZeRO-3 gathers each parameter in module hooks that a compiled "
                              "layer would bypass; use ZeRO 0-2 to compile, or "
                              "train.compile=false")


# Keys runs of earlier versions saved that the schema no longer has; a saved config drops them
# on reading (each one's effect is in keys the run saved beside it). On a command line they are
# unknown keys, refused with the key that took their place (``closest_keys``).
RETIRED_KEYS = (
    "transfer.warmup_fraction",  # optim.warmup_fraction; a transfer run saved optim.warmup_steps
)


def without_retired_keys(saved: Any) -> Any:
    """A saved config (DictConfig) without the keys of ``RETIRED_KEYS``."""
    for key in RETIRED_KEYS:
        group, _, name = key.rpartition(".")
        node = saved.get(group) if group else saved
        if node is not None and name in node:
            del node[name]
    return saved


def quoted(value: object) -> str:
    """``value`` as a quoted Hydra override value: paths and ``hf:x:{iso}`` hold characters
    (``:``, braces, spaces) that the override grammar would read otherwise. The grammar's
    escapes: a quote, and backslashes before a quote or the closing quote, are backslashed."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), str(value))
    return f"'{escaped}'"


def register_configs() -> None:
    """Register the schema; conf/config.yaml names ``schema`` first in its defaults list, so every
    group file merges into a typed node."""
    ConfigStore.instance().store(name="schema", node=Config)


# Where a refusal of a key or a group option sends the user.
LISTS_KEYS = "xmod_pretrain train --help lists every config group, key and value"


def schema_keys() -> list[str]:
    """Every key of the schema, dotted: ``train``, ``train.max_steps``, ..."""
    from omegaconf import DictConfig, OmegaConf

    def walk(node: DictConfig, prefix: str) -> list[str]:
        keys = []
        for key in node:
            keys.append(f"{prefix}{key}")
            if isinstance(node[key], DictConfig):
                keys += walk(node[key], f"{prefix}{key}.")
        return keys

    return walk(OmegaConf.structured(Config), "")


def closest_keys(key: str) -> list[str]:
    """Keys of the schema a mistyped ``key`` may mean: the same name in another group
    (``train.lr``: ``optim.lr``), else the most alike (``train.max_step``: ``train.max_steps``)."""
    keys = schema_keys()
    name = key.rsplit(".", 1)[-1]
    return [k for k in keys if k.rsplit(".", 1)[-1] == name and k != key] or closest(key, keys)


def unknown_keys_error(keys: list[str]) -> ConfigError:
    named = ", ".join(f"{key}{did_you_mean(closest_keys(key))}" for key in keys)
    return ConfigError(f"unknown config key(s) {named}: no such setting ({LISTS_KEYS})")


def node_error(err: Any) -> ConfigError:
    """OmegaConf's refusal of a value (a wrong type, a choice outside an enum, an interpolation
    that does not resolve) as one line naming the key: its own message runs over several lines."""
    from omegaconf.nodes import EnumNode

    if isinstance(err.child_node, EnumNode):
        choices = [choice.name for choice in err.child_node.enum_type]
        return ConfigError(f"{err.full_key}={err.value} is not allowed: one of "
                           f"{', '.join(choices)}{did_you_mean(closest(str(err.value), choices))}")
    value = "" if err.value is None else f"={err.value}"
    return ConfigError(f"{err.full_key or 'the config'}{value}: {str(err).splitlines()[0]}")


def check_known_keys(composed: Any) -> None:
    """Refuse keys the schema does not have. Hydra refuses ``train.max_step=3`` itself, but
    ``+train.max_step=3`` adds the key to a typed node, where it would be ignored."""
    from omegaconf import DictConfig, OmegaConf

    def unknown(node: DictConfig, schema: DictConfig, prefix: str) -> list[str]:
        found = []
        for key in node:
            if key not in schema:
                found.append(f"{prefix}{key}")
            elif isinstance(schema[key], DictConfig) and isinstance(node[key], DictConfig):
                found += unknown(node[key], schema[key], f"{prefix}{key}.")
        return found

    extra = unknown(composed, OmegaConf.structured(Config), "")
    if extra:
        raise unknown_keys_error(extra)


def to_config(composed: Any) -> Config:
    """A composed Hydra config as the typed Config, every key known and every value checked."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_known_keys(composed)
    try:
        config = OmegaConf.to_object(composed)
    except OmegaConfBaseException as err:  # run_dir=runs/${nme}: an interpolation of no key
        raise node_error(err) from None
    check_config(config)
    return config


def check_config(cfg: Config) -> None:
    """Raise ConfigError for the first value out of range, then for combinations that cannot
    work together. Cheap: it runs before any data, model or process-group work."""
    cfg.check("")
