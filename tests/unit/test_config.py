"""Config composition with Hydra's Compose API, and the dry runs of the real recipes."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tests.support.launch import cli_here
from xmod_core.languages import XMOD_BASE_LANGUAGES
from xmod_pretrain.config import CONF_DIR, Config, check_config, check_known_keys, register_configs
from xmod_pretrain.model.xmod import count_parameters
from xmod_pretrain.runs.records import load_config
from xmod_pretrain.schema import ConfigError
from xmod_pretrain.training.engine import deepspeed_config


def load(*overrides: str) -> Config:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize("exp", ["add_language", "transfer"])
def test_a_recipes_warmup_is_a_share_of_any_length(exp):
    """``add-language --steps 20`` (or a short transfer) warming up over the 20 steps that suit
    200 would be all warmup; steps given on the command line still win."""
    for steps, warmup in ((200, 20), (20, 2)):
        cfg = load(f"+exp={exp}", f"train.max_steps={steps}")
        check_config(cfg)
        assert cfg.optim.warmup(steps) == warmup
    assert load(f"+exp={exp}", "train.max_steps=20", "optim.warmup_steps=5").optim.warmup(20) == 5
    with pytest.raises(ConfigError, match=r"^optim.warmup_steps=null needs optim.warmup_fraction"):
        check_config(load("+exp=demo", "optim.warmup_steps=null"))


@pytest.mark.parametrize("exp", ["demo", "base", "large"])
def test_every_experiment_composes_and_takes_the_common_overrides(exp, tmp_path):
    cfg = load(f"+exp={exp}", f"run_dir={tmp_path}", "train.max_steps=7")
    assert isinstance(cfg, Config)
    assert cfg.run_dir == str(tmp_path) and cfg.train.max_steps == 7


@pytest.mark.parametrize("exp, total, active", [("base", 852.7e6, 285.4e6),
                                                ("large", 1.58e9, 572.8e6)])
def test_base_and_large_are_the_published_models(exp, total, active):
    """xmod-base and xmod-large-prenorm as the paper gives them: its 81 languages, its parameter
    counts in all and active per language."""
    model = load(f"+exp={exp}").model
    assert tuple(model.languages) == XMOD_BASE_LANGUAGES
    assert count_parameters(model) == (pytest.approx(total, rel=0.01),
                                       pytest.approx(active, rel=0.01))


def test_the_large_recipe_gives_each_rank_its_own_languages_under_zero3(tiny_data):
    """The language modules are outside ZeRO-3's partitioning, so each rank and micro-step
    draws its own language: a step of 16 ranks x 8 micro-steps holds many."""
    from xmod_pretrain.data.masking import Masker
    from xmod_pretrain.data.sampler import LanguageSampler
    from xmod_pretrain.data.shards import ShardSet

    cfg = load("+exp=large", f"data.dir={tiny_data}")
    assert cfg.data.language_per == "rank" and cfg.deepspeed.zero_stage == 3
    langs = ["en_XX", "de_DE", "ru_RU", "el_GR"]
    sampler = LanguageSampler(ShardSet(tiny_data, "train", langs, verify=False), cfg.data,
                              Masker(cfg.data.masking, 700), cfg.train.micro_batch_size,
                              cfg.train.seed, list(range(len(langs))))
    counts = [len(sampler.step_languages(step, cfg.train.grad_accum_steps, 16))
              for step in range(50)]
    assert min(counts) == len(langs), counts  # 128 draws over 4 languages miss none


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
    # Ours clips (training/clipping.py): DeepSpeed's norm would leave the language modules out.
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 0.0
    frozen = deepspeed_config(load("+exp=demo", "deepspeed=zero2"), 2, trains_shared=False)
    assert frozen["zero_optimization"]["stage"] == 0  # nothing for ZeRO-1/2 to partition
    offload = deepspeed_config(load("+exp=demo", "deepspeed=zero2_offload"), world_size=1)
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


@pytest.mark.parametrize("override,message", [
    ("train.max_steps=-5", "train.max_steps=-5 is not allowed: >= 0"),
    ("train.micro_batch_size=0", "train.micro_batch_size=0"),
    ("train.grad_accum_steps=0", "train.grad_accum_steps=0"),
    ("train.log_every=0", "train.log_every=0"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints=-1"),
    ("train.peak_tflops=0", "train.peak_tflops=0.0 is not allowed: null (datasheet or measured)"),
    ("data.alpha=-1", "data.alpha=-1.0 is not allowed: >= 0"),
    ("data.seq_len=513", "data.seq_len=513 is not allowed: model.max_position_embeddings=514"),
    ("data.seq_len=2", "data.seq_len=2"),
    ("optim.lr=0", "optim.lr=0.0"),
    ("optim.lr=-1e-3", "optim.lr=-0.001"),
    ("data.masking.prob=0", "data.masking.prob=0.0 is not allowed: in (0, 1)"),
    ("data.masking.mask_frac=0.95", "mask_frac + data.masking.random_frac"),
    ("add_language.languages=[yo_NG]", "recipe=pretrain with add_language.languages=['yo_NG']"),
    ("deepspeed.offload_param=true", "offload_param=true needs deepspeed.zero_stage=3"),
    ("model.num_attention_heads=5", "not a multiple of model.num_attention_heads=5"),
    ("optim.total_steps=500", "optim.total_steps=500 is below train.max_steps=600: the steps "
                              "after 500 would train at learning rate 0"),
    ("optim.module_state=host optim.update_absent_languages=true",
     "optim.module_state=host keeps only a step's languages on the device, and "
     "optim.update_absent_languages=true steps every language every step"),
])
def test_check_config_names_the_key_the_value_and_what_is_allowed(override, message):
    cfg = load("+exp=demo", *override.split())
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(cfg)


@pytest.mark.parametrize("override, choices", [
    ("data.language_per=node", "[rank, step]"),
    ("train.precision=fp16", "[fp32, bf16]"),
    ("logging.wandb_mode=on", "[offline, online, disabled]"),
    ("recipe=finetune", "[pretrain, add_language, transfer]"),
    ("optim.module_state=disk", "[device, host]"),
])
def test_hydra_refuses_a_choice_outside_the_schema_enum(override, choices):
    """String choices are enums in the schema: composing a bad one fails, naming the choices."""
    with pytest.raises(ConfigCompositionException) as err:
        load("+exp=demo", override)
    assert f"expected one of {choices}" in str(err.value.__cause__)


def test_the_add_language_experiment_selects_its_recipe():
    cfg = load("+exp=add_language", "add_language.languages=[yo_NG]")
    assert cfg.recipe == "add_language" and load("+exp=demo").recipe == "pretrain"
    check_config(cfg)


def test_a_key_added_with_plus_that_the_schema_lacks_is_refused():
    """Hydra's own hint for a misspelt key (``+train.max_step=3``) would add an ignored key."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        composed = compose("config", overrides=["+exp=demo", "+train.max_step=3"])
    with pytest.raises(ConfigError, match="unknown config key.s. train.max_step"):
        check_known_keys(composed)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        check_known_keys(compose("config", overrides=["+exp=demo"]))


@pytest.mark.parametrize("exp", ["demo", "base", "large", "curse", "add_language"])
def test_every_shipped_experiment_passes_the_checks(exp):
    check_config(load(f"+exp={exp}"))


@pytest.mark.integration
def test_a_bad_value_fails_within_seconds_with_one_line_and_writes_nothing(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "xmod_pretrain", "+exp=demo", "data.alpha=-1",
                           f"run_dir={tmp_path / 'run'}", f"data.dir={tmp_path / 'data'}"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "xmod_pretrain: error: data.alpha=-1.0 is not allowed: >= 0 (0 uniform, 1 proportional "
        "to the data)"]
    assert elapsed < 5, f"a config error took {elapsed:.1f} s"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_dry_run_prints_the_parameter_count(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = cli_here("+exp=base", "train.dry_run=true", f"run_dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("parameters:"))
    printed = (float(line.split()[1].rstrip("M")) * 1e6, float(line.split()[4].rstrip("M")) * 1e6)
    assert printed == pytest.approx(count_parameters(load("+exp=base").model), abs=0.05e6)
    assert "hidden_size:" in proc.stdout  # the resolved config
    assert list(tmp_path.iterdir()) == []  # nothing written: no outputs/, no run_dir


def test_a_model_and_data_that_do_not_belong_together_name_the_experiments():
    """No +exp: the default model is xmod-base (XLM-R's 250,002 ids), the default data the demo's."""
    from xmod_pretrain.recipes.pretrain.recipe import resolve_model_config

    cfg = load()
    manifest = {"tokenizer": {"vocab_size": 8002}, "languages": ["en_XX", "de_DE"]}
    with pytest.raises(ConfigError, match=r"model.vocab_size=250002 .* 8002 ids.*\+exp=demo"):
        resolve_model_config(cfg, manifest)
    fitted = resolve_model_config(load("model.vocab_size=null", "model.languages=[]"), manifest)
    assert fitted.vocab_size == 8002 and fitted.languages == ["en_XX", "de_DE"]


def test_compile_is_on_where_it_pays_and_refused_under_zero3():
    from xmod_pretrain.training.trainer import compiles

    assert compiles(load("+exp=demo")) == torch.cuda.is_available()  # null: CUDA, ZeRO 0-2
    assert compiles(load("+exp=demo", "train.compile=true"))
    assert not compiles(load("+exp=demo", "deepspeed=zero3"))
    cfg = load("+exp=demo", "deepspeed=zero3", "train.compile=true")
    with pytest.raises(ConfigError, match=r"train.compile=true with deepspeed.zero_stage=3 .* "
                                          "train.compile=false"):
        check_config(cfg)


def test_a_saved_config_with_a_retired_key_still_loads_and_the_command_line_names_its_heir(
        tmp_path):
    saved = OmegaConf.to_container(OmegaConf.structured(Config))
    saved["transfer"]["warmup_fraction"] = 0.1  # what transfer runs of earlier versions saved
    saved["run_dir"] = str(tmp_path)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    assert load_config(tmp_path / "config.yaml").optim.warmup_steps == 100
    with pytest.raises(ConfigError, match=r"transfer.warmup_fraction \(did you mean "
                                          r"optim.warmup_fraction\?\)"):
        check_known_keys(OmegaConf.create(saved))  # +transfer.warmup_fraction=0.1


def test_the_global_batch_sets_the_accumulation_for_the_ranks_of_a_start():
    """train.global_batch_size: the same sequences a step on 1, 2 or 4 ranks; refused where the
    ranks' micro-batches do not divide it, or where grad_accum_steps says otherwise."""
    train = load("+exp=demo", "train.global_batch_size=32", "train.micro_batch_size=8").train
    assert [train.for_ranks(n).grad_accum_steps for n in (1, 2, 4)] == [4, 2, 1]
    assert load("+exp=demo").train.for_ranks(4).grad_accum_steps == 1  # null: as given
    with pytest.raises(ConfigError, match=re.escape(
            "train.global_batch_size=32 is not a multiple of 3 rank(s) x "
            "train.micro_batch_size=8 = 24")):
        train.for_ranks(3)
    with pytest.raises(ConfigError, match=re.escape(
            "train.grad_accum_steps=3 and train.global_batch_size=32 disagree on 2 rank(s) (it "
            "gives 2)")):
        dataclasses.replace(train, grad_accum_steps=3).for_ranks(2)
