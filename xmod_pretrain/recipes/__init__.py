"""Kinds of run. Each recipe builds, from the typed config, what the Trainer loops over (the
model with its trainable parameters marked, the train sampler, the validation sets); the Trainer
itself knows none of them. ``config.recipe`` chooses one:

    pretrain        pretrain.py       a fresh model, or every weight of an ``init_from`` folder
    add_language    add_language.py   grow a trained run by new languages' modules, all else frozen
    transfer        transfer.py       fine-tune a classifier on one language, score it on the others

A new kind of run is a module here with a ``Recipe`` subclass (base.py), an entry in
``RECIPES`` and in ``config.RunKind``, and usually an experiment in conf/exp/.
"""

from __future__ import annotations

from xmod_pretrain.config import Config, RunKind
from xmod_pretrain.recipes.add_language import AddLanguage
from xmod_pretrain.recipes.base import Recipe
from xmod_pretrain.recipes.pretrain import Pretrain
from xmod_pretrain.recipes.transfer import Transfer

RECIPES: dict[RunKind, type[Recipe]] = {
    RunKind.pretrain: Pretrain,
    RunKind.add_language: AddLanguage,
    RunKind.transfer: Transfer,
}


def recipe_class(cfg: Config) -> type[Recipe]:
    return RECIPES[cfg.recipe]


__all__ = ["RECIPES", "Recipe", "recipe_class"]
