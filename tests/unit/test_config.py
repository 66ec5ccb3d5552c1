"""Config composition with Hydra's Compose API, and the dry runs of the real recipes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from xmod_pretrain.cli import CONF_DIR
from xmod_pretrain.config import Config, register_configs
from xmod_pretrain.engine import deepspeed_config
from xmod_pretrain.languages import XMOD_BASE_LANGUAGES


def load(*overrides: str) -> Config:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize("exp", ["demo", "base", "large"])
def test_every_experiment_composes_and_takes_the_common_overrides(exp, tmp_path):
    cfg = load(f"+exp={exp}", f"run_dir={tmp_path}", "train.max_steps=7")
    assert isinstance(cfg, Config)
    assert cfg.run_dir == str(tmp_path) and cfg.train.max_steps == 7


def test_base_and_large_recipes():
    base, large = load("+exp=base").model, load("+exp=large").model
    assert tuple(base.languages) == XMOD_BASE_LANGUAGES and len(base.languages) == 81
    assert (base.hidden_size, base.num_hidden_layers, base.vocab_size) == (768, 12, 250002)
    assert base.adapter_reduction_factor == 2 and not base.pre_norm
    assert base.ln_before_adapter and base.adapter_reuse_layer_norm and not base.adapter_layer_norm
    assert (large.hidden_size, large.num_hidden_layers, large.adapter_reduction_factor) == (1024, 24, 4)
    assert large.pre_norm and large.adapter_layer_norm and not large.ln_before_adapter
    assert tuple(large.languages) == XMOD_BASE_LANGUAGES


def test_misspelt_key_and_wrong_type_are_named():
    with pytest.raises(ConfigCompositionException) as err:
        load("+exp=demo", "train.max_step=3")
    assert "max_step" in str(err.value.__cause__ or err.value)
    with pytest.raises(ConfigCompositionException) as err:
        load("+exp=demo", "data.alpha=high")
    assert "alpha" in str(err.value.__cause__ or err.value)


def test_deepspeed_config_follows_train_config():
    cfg = load("+exp=demo", "deepspeed=zero3", "train.micro_batch_size=4",
               "train.grad_accum_steps=3", "optim.clip_grad_norm=0.5")
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 0.5
    offload = deepspeed_config(load("+exp=demo", "deepspeed=zero2_offload"), world_size=1)
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    with pytest.raises(ValueError, match="offload_param"):
        deepspeed_config(load("+exp=demo", "deepspeed.offload_param=true"), world_size=1)


@pytest.mark.parametrize("exp,total,active", [("base", 852.7e6, 285.4e6), ("large", 1.58e9, 572.8e6)])
def test_dry_run_prints_the_parameter_count(exp, total, active, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "xmod_pretrain", f"+exp={exp}", "train.dry_run=true",
         f"run_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("parameters:"))
    printed_total = float(line.split()[1].rstrip("M")) * 1e6
    printed_active = float(line.split()[4].rstrip("M")) * 1e6
    assert printed_total == pytest.approx(total, rel=0.01)
    assert printed_active == pytest.approx(active, rel=0.01)
    assert "hidden_size:" in proc.stdout  # the resolved config
    assert list(tmp_path.iterdir()) == []  # nothing written: no outputs/, no run_dir
