"""What every config schema is built from: a typed dataclass that checks its own values.

Hydra's schema types every key; a schema's ``RULES`` bound its values and ``check_together`` its
combinations, so that a zero batch or a negative alpha stops the run within a second of starting,
naming the key, rather than minutes later in DeepSpeed or at step 1 (or never: max_steps=-5 used
to "finish" with rc 0). Each component's schema lives in its folder (``model/config.py``,
``data/config.py``, ``training/config.py``, ``recipes/<kind>/config.py``); config.py composes them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

from xmod_core.errors import UserError

Rule = tuple[str, Callable[[Any], bool], str]  # (field, accepts the value, what is allowed)


class ConfigError(UserError, ValueError):
    """A config value out of its range; the message names the key, the value and what is allowed."""


class Schema:
    """A config node: ``check(prefix)`` applies its ``RULES``, then its children's checks, then
    ``check_together``; a ConfigError names the first value refused, with its full key."""

    RULES: ClassVar[tuple[Rule, ...]] = ()

    def check(self, prefix: str) -> None:
        for name, ok, allowed in self.RULES:
            value = getattr(self, name)
            if not ok(value):
                raise ConfigError(f"{prefix}{name}={value!r} is not allowed: {allowed}")
        for node in dataclasses.fields(self):
            child = getattr(self, node.name)
            if isinstance(child, Schema):
                child.check(f"{prefix}{node.name}.")
        self.check_together(prefix)

    def check_together(self, prefix: str) -> None:
        """Refuse combinations of this node's values that cannot work together."""


def positive(v: Any) -> bool:
    return v > 0 and math.isfinite(v)


def at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low and math.isfinite(v)


def fraction(v: float) -> bool:  # an open unit interval
    return 0 < v < 1


def share(v: float) -> bool:  # a closed unit interval
    return 0 <= v <= 1


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


def optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """``ok``, or None (a key whose null means "derive it")."""
    return lambda v: v is None or ok(v)
