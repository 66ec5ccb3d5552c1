"""Kinds of run. Each recipe builds, from the typed config, what the Trainer loops over (the
model with its trainable parameters marked, the train sampler, the validation sets); the Trainer
itself knows none of them. ``config.recipe`` chooses one, a folder here:

    pretrain/       a fresh model, or every weight of an ``init_from`` folder
    add_language/   grow a trained run by new languages' modules, all else frozen
    transfer/       fine-tune a classifier on one language, score it on the others

A new kind of run is a folder here whose ``recipe.py`` defines ``RECIPE``, a ``Recipe`` subclass
(base.py), plus its name in ``config.RunKind`` and usually an experiment in conf/exp/.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xmod_pretrain.config import Config
    from xmod_pretrain.recipes.base import Recipe


def recipe_class(cfg: Config) -> type[Recipe]:
    """``recipes/<cfg.recipe>/recipe.py``'s ``RECIPE``, imported when a run needs it (a recipe
    imports much of the package; nothing else needs to import every recipe)."""
    return importlib.import_module(f"{__name__}.{cfg.recipe.value}.recipe").RECIPE
