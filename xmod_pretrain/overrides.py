"""Hydra's refusals of a command line as one line each, like every other refusal.

Hydra prints a refused override or config group option over several lines (the search path, a
hint to set HYDRA_FULL_ERROR) and, for a misspelt key, suggests adding it with ``+``, which the
schema's own check then refuses (``config.check_known_keys``). Raised instead of printed, each
becomes a ConfigError that names the bad key, value or option and the closest valid names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from xmod_core.errors import closest, did_you_mean
from xmod_pretrain.config import LISTS_KEYS, node_error, unknown_keys_error
from xmod_pretrain.schema import ConfigError

# Hydra raises its errors rather than printing them and exiting while this is set.
FULL_ERROR = "HYDRA_FULL_ERROR"


@contextmanager
def hydra_errors_as_config_errors() -> Iterator[None]:
    """Around a Hydra app's run: its refusals of the command line become ConfigErrors. The
    task's own errors are unchanged: user errors are one line inside it, bugs keep a traceback."""
    before = os.environ.get(FULL_ERROR)
    os.environ[FULL_ERROR] = "1"
    try:
        yield
    except HydraException as err:
        raise hydra_error(err) from None
    finally:
        if before is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = before


def hydra_error(err: HydraException) -> ConfigError:
    cause = err.__cause__
    if isinstance(err, MissingConfigException) and err.options is not None \
            and "/" in (err.missing_cfg_file or ""):
        return missing_option(err.missing_cfg_file, err.options)
    if isinstance(err, OverrideParseException):
        return ConfigError(f"cannot read the override {err.override!r}: "
                           f"{err.message.splitlines()[0]} (Hydra's override grammar)")
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        return unknown_keys_error([cause.full_key])
    if isinstance(cause, OmegaConfBaseException):
        return node_error(cause)
    return ConfigError(" ".join(line.strip() for line in str(err).splitlines() if line.strip()))


def missing_option(config_file: str, options: list[str]) -> ConfigError:
    """``deepspeed=zero4``, ``+exp=dem``: an option its config group lacks."""
    group, option = config_file.rsplit("/", 1)
    return ConfigError(f"{group}={option}: config group {group} has no option {option}"
                       f"{did_you_mean(closest(option, options))}; its options: "
                       f"{', '.join(options)} ({LISTS_KEYS})")
