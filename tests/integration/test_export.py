"""Export to transformers and back: real runs exported, loaded by transformers, compared with ours."""

from __future__ import annotations

import dataclasses
import json
import logging
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import xmod_pretrain
from tests.support.hf import UDHR, assert_same_logits, export_with_cli, udhr_lines
from tests.support.launch import run_training
from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.cli import main as cli_main
from xmod_pretrain.interop import (
    WeightMismatchError,
    export_model,
    export_run,
    hf_tokenizer_file,
    load_hf_weights,
    model_config_from_hf,
)
from xmod_pretrain.interop.config import XMOD_CONFIG_DEFAULTS
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.runs.inference import RunModel, encode_padded
from xmod_pretrain.runs.records import open_run

pytestmark = pytest.mark.integration

SHORT_RUN = ["train.max_steps=4", "train.save_every=2", "train.eval_every=0", "train.log_every=2",
             "optim.warmup_steps=1"]
LARGE_FLAGS = ["model.pre_norm=true", "model.ln_before_adapter=false",
               "model.adapter_layer_norm=true", "model.adapter_reuse_layer_norm=false",
               "model.adapter_reduction_factor=4"]


def load_hf(folder: Path, caplog) -> transformers.XmodForMaskedLM:
    """transformers' model from ``folder``; fails on any missing/unexpected weight or warning."""
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="transformers"):
            model, info = transformers.AutoModelForMaskedLM.from_pretrained(
                folder, output_loading_info=True)
    finally:
        transformers.logging.disable_propagation()
    assert isinstance(model, transformers.XmodForMaskedLM)
    assert not any(info.values()), info
    assert not [r for r in caplog.records if r.name.startswith("transformers")], caplog.text
    return model.eval()


def random_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, 24] random ids; rows 1 and 2 end in padding."""
    ids = torch.randint(3, vocab, (3, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 4:] = 0
    return ids.masked_fill(mask == 0, 1), mask


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory) -> Path:
    """A post-norm run (the base recipe) with checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    run_training(run_dir, tiny_data, *SHORT_RUN)
    return run_dir


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    export_with_cli(run, out)
    return out


@pytest.fixture(scope="module")
def ours(run) -> tuple[RunModel, Tokenizer]:
    return xmod_pretrain.load_run(run)


def test_export_loads_in_transformers_without_warnings(run, exported, ours, caplog):
    model, tokenizer = ours
    hf = load_hf(exported, caplog)
    languages = json.loads((run / "checkpoints" / "step_00000004" / "languages.json").read_text())
    assert list(hf.config.languages) == languages == list(model.languages)
    assert hf.config.default_language == languages[0]
    saved = model.model.config
    assert (hf.config.layer_norm_eps, hf.config.type_vocab_size, hf.config.max_position_embeddings,
            hf.config.vocab_size) == (saved.layer_norm_eps, 1, saved.max_position_embeddings,
                                      tokenizer.vocab_size)
    assert (hf.config.pad_token_id, hf.config.bos_token_id, hf.config.eos_token_id) == (1, 0, 2)
    assert not hf.config.pre_norm and hf.config.ln_before_adapter
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert hf_tokenizer.model_max_length == saved.max_position_embeddings - 2
    assert {p.name for p in exported.iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "sentencepiece.bpe.model",
        "tokenizer_config.json", "special_tokens_map.json"}


def test_logits_match_for_every_language(exported, ours, caplog):
    model, tokenizer = ours
    hf = load_hf(exported, caplog)
    assert_same_logits(model, hf, *random_batch(tokenizer.vocab_size))
    # Real text: the UDHR in each of the run's languages, and in Yoruba, which it never saw.
    text = [line for lang in [*model.languages, "yo_NG"] for line in udhr_lines(lang, 2)]
    assert_same_logits(model, hf, *encode_padded(tokenizer, text, max_length=96))


def test_per_sample_lang_ids_and_default_language(exported, ours, caplog):
    model, tokenizer = ours
    hf = load_hf(exported, caplog)
    ids, mask = encode_padded(tokenizer, [udhr_lines(lang, 1)[0] for lang in model.languages],
                              max_length=64)
    with torch.no_grad():  # row i in language i, in one transformers batch
        mixed = hf(ids, attention_mask=mask, lang_ids=torch.arange(len(ids))).logits
        for i, lang in enumerate(model.languages):
            expected = model(ids[i:i + 1], lang, attention_mask=mask[i:i + 1])
            torch.testing.assert_close(mixed[i:i + 1], expected, atol=1e-5, rtol=0)
            hf.set_default_language(lang)
            default = hf(ids, attention_mask=mask).logits
            torch.testing.assert_close(default, model(ids, lang, attention_mask=mask),
                                       atol=1e-5, rtol=0)


def test_exported_tokenizer_gives_our_ids(exported, ours):
    _, tokenizer = ours
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    text = [line for p in sorted(UDHR.glob("*.txt.xz"))
            for line in udhr_lines(p.name.removesuffix(".txt.xz"), 10)]
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.encode_batch(text)


def test_fine_tuning_changes_only_unfrozen_weights(exported, ours):
    _, tokenizer = ours
    model = transformers.XmodForSequenceClassification.from_pretrained(exported, num_labels=2)
    model.freeze_embeddings_and_language_adapters()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, mask = encode_padded(tokenizer, udhr_lines("de_DE", 4), max_length=48)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    model.train()
    loss = model(ids, attention_mask=mask, labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    optimizer.step()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(".adapter_modules." in n for n in frozen) and any("embeddings" in n for n in frozen)
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (name not in frozen), name


def test_load_run(run, ours):
    model, tokenizer = ours
    assert xmod_pretrain.load_run is xmod_pretrain.runs.inference.load_run
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert all(p.device.type == "cpu" for p in model.parameters())
    ids, mask = encode_padded(tokenizer, ["Alle Menschen sind frei.", "Frei."])
    logits = model(ids, lang="de_DE", attention_mask=mask)
    assert logits.shape == (2, ids.size(1), tokenizer.vocab_size)
    with pytest.raises(KeyError, match="de_DE, el_GR, en_XX, ru_RU"):
        model(ids, lang="yo_NG")
    earlier, _ = xmod_pretrain.load_run(run, step=2)
    assert not torch.equal(earlier(ids, "de_DE", mask), logits)


def test_export_errors_name_the_problem(run, tmp_path, capsys):
    cases = [
        (["--from", str(tmp_path / "nowhere")], "does not exist"),
        (["--from", str(tmp_path)], "has no checkpoint"),
        (["--from", str(run), "--step", "3"], "available steps: 2, 4"),
        (["--from", str(run), "--default-language", "yo_NG"], "de_DE, el_GR, en_XX, ru_RU"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_:
            cli_main(["export", *args, "--out", str(tmp_path / "out")])
        assert exit_.value.code == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_zero3_two_process_prenorm_run_exports(tiny_data, tmp_path, caplog):
    """ZeRO-3 splits every weight over the ranks; the checkpoint's consolidated weights export."""
    run_dir = tmp_path / "run"
    run_training(run_dir, tiny_data, "train.max_steps=2", "train.save_every=2",
                 "train.eval_every=0", "optim.warmup_steps=1", "deepspeed=zero3",
                 *LARGE_FLAGS, nproc=2)
    checkpoint = export_run(run_dir, tmp_path / "hf", step=2)
    assert len(list(checkpoint.path.glob("zero_pp_rank_*_model_states.pt"))) == 2
    hf = load_hf(tmp_path / "hf", caplog)
    assert hf.config.pre_norm and hf.config.adapter_layer_norm
    model, tokenizer = xmod_pretrain.load_run(run_dir)
    assert_same_logits(model, hf, *random_batch(tokenizer.vocab_size))


# ---- transformers -> ours -> transformers ------------------------------------------------------

HF_FLAGS = {
    "base-postnorm": dict(pre_norm=False, ln_before_adapter=True, adapter_layer_norm=False,
                          adapter_reuse_layer_norm=True, adapter_reduction_factor=2),
    "large-prenorm": dict(pre_norm=True, ln_before_adapter=False, adapter_layer_norm=True,
                          adapter_reuse_layer_norm=False, adapter_reduction_factor=4),
}


def tiny_hf_folder(folder: Path, sp_model: Path, flags: dict) -> transformers.XmodForMaskedLM:
    """A random transformers X-MOD saved with save_pretrained, beside a SentencePiece model."""
    torch.manual_seed(0)
    config = transformers.XmodConfig(
        vocab_size=Tokenizer.from_file(sp_model).vocab_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=66,
        layer_norm_eps=1e-5, type_vocab_size=1, languages=["en_XX", "de_DE", "yo_NG"], **flags)
    model = transformers.XmodForMaskedLM(config).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms, so no misplaced one can hide
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    shutil.copyfile(sp_model, folder / "sentencepiece.bpe.model")
    return model


@pytest.mark.parametrize("flags", HF_FLAGS.values(), ids=HF_FLAGS.keys())
def test_transformers_round_trip(flags, tiny_data, tmp_path, caplog):
    original = tiny_hf_folder(tmp_path / "hf", tiny_data / "sentencepiece.bpe.model", flags)
    cfg = model_config_from_hf(tmp_path / "hf")
    assert cfg.languages == ["en_XX", "de_DE", "yo_NG"] and cfg.layer_norm_eps == 1e-5
    model = XmodForMaskedLM(cfg).eval()
    load_hf_weights(model, tmp_path / "hf")
    assert_same_logits(RunModel(model), original, *random_batch(cfg.vocab_size))

    export_model(model, hf_tokenizer_file(tmp_path / "hf"), tmp_path / "back")
    back = load_hf(tmp_path / "back", caplog)
    expected = original.state_dict()
    assert back.state_dict().keys() == expected.keys()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    for field in dataclasses.fields(ModelConfig):
        assert getattr(back.config, field.name) == getattr(original.config, field.name), field.name


def test_load_hf_weights_names_every_problem(tiny_data, tmp_path):
    folder = tmp_path / "hf"
    tiny_hf_folder(folder, tiny_data / "sentencepiece.bpe.model", HF_FLAGS["base-postnorm"])
    model = XmodForMaskedLM(model_config_from_hf(folder))
    weights = load_file(str(folder / "model.safetensors"))
    # XmodModel's pooler, transformers' old position-id buffer and tied copies: ignored.
    weights["roberta.pooler.dense.weight"] = torch.zeros(32, 32)
    weights["roberta.embeddings.position_ids"] = torch.arange(66)[None]
    weights["lm_head.decoder.weight"] = weights["roberta.embeddings.word_embeddings.weight"].clone()
    save_file(weights, str(folder / "model.safetensors"))
    load_hf_weights(model, folder)

    del weights["roberta.encoder.layer.1.output.adapter_modules.yo_NG.dense2.bias"]
    weights["roberta.encoder.layer.0.output.adapter_modules.fr_XX.dense1.bias"] = torch.zeros(16)
    weights["lm_head.dense.weight"] = torch.zeros(32, 31)
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")  # the .bin path, read with weights_only
    with pytest.raises(WeightMismatchError) as error:
        load_hf_weights(model, folder)
    message = str(error.value)
    for expected in ("missing (1): roberta.encoder.layer.1.output.adapter_modules.yo_NG.dense2.bias",
                     "unexpected (1): roberta.encoder.layer.0.output.adapter_modules.fr_XX",
                     "wrong shape (1): lm_head.dense.weight (has [32, 31], model needs [32, 32])"):
        assert expected in message


def test_model_config_from_hf_reads_omitted_keys_as_transformers_does(tmp_path):
    reference = transformers.XmodConfig()
    assert XMOD_CONFIG_DEFAULTS == {k: getattr(reference, k) if k != "languages"
                                    else list(reference.languages) for k in XMOD_CONFIG_DEFAULTS}
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "xmod", "type_vocab_size": 1, "vocab_size": 250002,
         "languages": ["en_XX", "yo_NG"]}))
    cfg = model_config_from_hf(tmp_path)
    assert (cfg.layer_norm_eps, cfg.max_position_embeddings, cfg.languages) == (
        1e-12, 512, ["en_XX", "yo_NG"])
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xmod", "vocab_size": 10}))
    with pytest.raises(ValueError, match="type_vocab_size is 2"):
        model_config_from_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="sentencepiece.bpe.model"):
        hf_tokenizer_file(tmp_path)


@pytest.mark.parametrize("flags", HF_FLAGS.values(), ids=HF_FLAGS.keys())
def test_init_from_round_trip_through_a_run(flags, tiny_corpus, tiny_data, tmp_path, caplog):
    """transformers folder -> our run (init_from, the real CLI) -> export -> identical tensors,
    languages and order kept, token ids from the folder's own SentencePiece model."""
    original = tiny_hf_folder(tmp_path / "hf", tiny_data / "sentencepiece.bpe.model", flags)
    run = tmp_path / "run"
    proc = run_training(run, tmp_path / "data", f"init_from={tmp_path / 'hf'}",
                        f"data.source={tiny_corpus}", "data.languages=[en_XX,de_DE]",
                        "data.seq_len=32", "train.max_steps=0", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialised every weight from" in proc.stdout
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == Tokenizer.from_file(
        tmp_path / "hf" / "sentencepiece.bpe.model").sha256
    export_with_cli(run, tmp_path / "back")
    back = load_hf(tmp_path / "back", caplog)
    assert back.config.languages == ["en_XX", "de_DE", "yo_NG"]
    expected = original.state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_init_from_names_a_misshaped_weight(tiny_corpus, tiny_data, tmp_path):
    tiny_hf_folder(tmp_path / "hf", tiny_data / "sentencepiece.bpe.model", HF_FLAGS["base-postnorm"])
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    key = "roberta.encoder.layer.0.output.adapter_modules.de_DE.dense1.weight"
    weights[key] = weights[key][:, :-1].contiguous()
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    proc = run_training(tmp_path / "run", tmp_path / "data", f"init_from={tmp_path / 'hf'}",
                        f"data.source={tiny_corpus}", "data.languages=[en_XX,de_DE]",
                        "data.seq_len=32", "train.max_steps=0", check=False)
    assert proc.returncode != 0
    assert key in proc.stdout + proc.stderr


def test_add_language_grows_a_transformers_folder(tiny_data, tmp_path):
    """add-language --from a transformers folder: its weights stay, only the new modules train."""
    tiny_hf_folder(tmp_path / "hf", tiny_data / "sentencepiece.bpe.model", HF_FLAGS["base-postnorm"])
    original = load_file(str(tmp_path / "hf" / "model.safetensors"))
    out = tmp_path / "grown"
    cli = [sys.executable, "-m", "xmod_pretrain.cli", "add-language", "--lang", "sw_KE",
           "--text", str(tmp_path / "sw.txt"), "--from", str(tmp_path / "hf"), "--out", str(out),
           "--steps", "2", "data.seq_len=32", "train.micro_batch_size=4", "train.eval_batches=1"]
    with lzma.open(Path("data_prep/corpus/udhr/yo_NG.txt.xz"), "rt", encoding="utf-8") as f:
        (tmp_path / "sw.txt").write_text(f.read(), encoding="utf-8")
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = open_run(out)
    assert run.languages == ["en_XX", "de_DE", "yo_NG", "sw_KE"]
    grown = run.weights()
    assert set(grown) - set(original) == {k for k in grown if ".sw_KE." in k} != set()
    for key, tensor in original.items():  # the folder's weights, bit for bit
        assert torch.equal(tensor, grown[key]), key
