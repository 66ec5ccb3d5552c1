"""What the log shows: the gradient norm, loss spikes, the compact per-language line, and the
records wandb and TensorBoard get (TensorBoard's event files read back); metrics.jsonl cut back to
the checkpoint a start resumes from, a torn last line repaired, and its reader naming bad lines."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import torch

from bench.common import Size, engine_config, masked_batch, single_process_group
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.training.config import LoggingConfig
from xmod_pretrain.training.distributed import announce_cpu_comm_build
from xmod_pretrain.training.engine import build_training_engine
from xmod_pretrain.training.metrics import (
    WANDB_ID_FILE,
    MetricsError,
    MetricsLogger,
    SpikeWatch,
    duration,
    flatten,
    keep_before,
    language_line,
    read_records,
    train_line,
)

TINY = Size("tiny", hidden=32, layers=2, heads=2, intermediate=64, vocab=300, languages=3,
            batch=2, seq=16)


def step_norms(stage: int, model: XmodForMaskedLM) -> tuple[float, float]:
    """(the norm the trainer logs for one step, the norm of every gradient computed here, before
    the step clips them: shared weights and the step's language module alike)."""
    batch = masked_batch(TINY)
    with single_process_group() as info:
        training = build_training_engine(model, engine_config(TINY.model_config(), TINY.batch,
                                                              stage), info)
        torch.manual_seed(1)  # the same dropout in both steps
        loss = training(input_ids=batch.input_ids, lang=batch.lang,
                        mlm_positions=batch.positions, mlm_targets=batch.targets).loss
        training.backward(loss)
        params = [*model.parameters(), *training.store.named.values()]
        grads = [p.grad for p in params if p.grad is not None and p.grad.numel() > 0]
        # Under ZeRO-2 DeepSpeed moved the shared gradients into its partitions: the module's
        # remain, and ZeRO-0's whole ones.
        expected = float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])))
        training.micro_step([model.languages[batch.lang]], last=True)
        logged = float(training.clip.norm)
        del training
    return logged, expected


@pytest.mark.slow
def test_gradient_norm_is_the_norm_before_clipping_under_zero0_and_zero2():
    """ZeRO-0: the shared part measured by the trainer; ZeRO-2: by DeepSpeed; the language
    module's by the store: the same step, the same global norm."""
    torch.manual_seed(0)
    model = XmodForMaskedLM(TINY.model_config())
    zero0, expected = step_norms(0, copy.deepcopy(model))
    zero2, _ = step_norms(2, copy.deepcopy(model))
    assert expected > 1.0  # clip_grad_norm is 1.0: this norm is before clipping
    assert zero0 == pytest.approx(expected, rel=1e-5)
    assert zero2 == pytest.approx(expected, rel=1e-4)


def test_a_spike_is_flagged_against_the_recent_median_and_can_be_turned_off():
    watch = SpikeWatch(factor=2.0, window=5)
    assert [watch.check(x) for x in (9.0, 8.0, 7.0, 6.5, 6.0)] == [None] * 5
    assert watch.check(13.5) is None  # under 2 x 7.0, the median of the five before it
    assert watch.check(15.0) == 7.0   # the window now holds 8.0 7.0 6.5 6.0 13.5
    off = SpikeWatch(factor=0, window=5)
    assert [off.check(x) for x in (1.0, 1.0, 1.0, 100.0)] == [None] * 4


def test_the_language_line_stays_short_with_many_languages():
    few = {"en_XX": 6.5, "de_DE": 6.1}
    assert language_line(few).split() == ["de_DE", "6.100", "en_XX", "6.500"]
    many = {f"l{i}_XX": 5.0 + i / 10 for i in range(81)}
    line = language_line(many)
    assert "81 languages: best l0_XX 5.000 l1_XX 5.100 l2_XX 5.200 | worst" in line
    assert line.endswith("l80_XX 13.000") and len(line) < 140


def test_the_train_line_reads_like_fairseq_and_torchtitan():
    record = {"step": 10, "loss": 7.25, "grad_norm": 1.5, "lr": 3e-4, "tokens_per_s": 5300.0,
              "updates_per_s": 0.52, "mfu": 0.36, "wall_s": 65.0}
    line = train_line(record, 1000, eta_s=3725)
    for part in ("step     10/1000", "loss 7.2500", "gnorm 1.500", "lr 3.00e-04",
                 "tok/s 5,300", "upd/s 0.52", "mfu 36.0%", "1m05s (eta 1h02m)"):
        assert part in line, part
    assert "gnorm -" in train_line({**record, "grad_norm": None}, 1000, 0)
    assert (duration(12.4), duration(245), duration(3725)) == ("12s", "4m05s", "1h02m")


def test_records_carry_time_and_tensorboard_gets_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path, LoggingConfig(tensorboard=True), True, {}, first_step=0)
    for step, loss in ((1, 9.0), (5, 7.5)):
        logger.log({"step": step, "loss": loss, "lang_loss": {"en_XX": loss - 1},
                    "split": "train", "loss_spike": False})
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["time"] > 1.7e9 and r["elapsed_s"] >= 0 for r in records)
    assert records[1]["elapsed_s"] >= records[0]["elapsed_s"]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "lang_loss/en_XX", "elapsed_s"}
    for key in ("loss", "lang_loss/en_XX"):
        read = [(e.step, e.value) for e in events.Scalars(key)]
        assert read == [(r["step"], pytest.approx(flatten(r, "/")[key])) for r in records]


def test_the_first_cpu_start_announces_the_comm_op_build(tmp_path, monkeypatch, capsys):
    import deepspeed

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    announce_cpu_comm_build()
    assert "compiles its CPU communication op for this install" in capsys.readouterr().out
    build = tmp_path / "py311_cpu" / "deepspeed_shm_comm"
    build.mkdir(parents=True)
    (build / "deepspeed_shm_comm.so").touch()
    # built by another install (another venv): torch rebuilds it, so it is announced
    (build / "build.ninja").write_text("build shm.o: compile /other/venv/deepspeed/ops/shm.cpp\n")
    announce_cpu_comm_build()
    assert "compiles" in capsys.readouterr().out
    sources = Path(deepspeed.__file__).parent / "ops" / "csrc" / "cpu" / "comm" / "shm.cpp"
    headers = Path(torch.__file__).parent / "include"
    (build / "build.ninja").write_text(f"cflags = -isystem {headers}\nbuild shm.o: compile "
                                       f"{sources}\n")
    announce_cpu_comm_build()
    assert capsys.readouterr().out == ""  # built for this install: nothing to say


def test_many_language_curves_highlight_the_best_and_worst_and_the_page_has_captions(tmp_path):
    from xmod_pretrain.evaluation.report import (
        highlighted_languages,
        language_colors,
        language_figure,
        write_page,
    )

    few = {f"l{i}_XX": [(0, 9.0), (10, 5.0 + i)] for i in range(8)}
    assert highlighted_languages(few) == list(few)
    many = {f"l{i:02d}_XX": [(0, 9.0), (10, 5.0 + i / 10)] for i in range(81)}
    assert highlighted_languages(many) == ["l00_XX", "l01_XX", "l02_XX",
                                           "l78_XX", "l79_XX", "l80_XX"]
    records = [{"step": s, "lang_loss": {lang: dict(p)[s] for lang, p in many.items()}}
               for s in (0, 10)]
    figure = language_figure(records, "valid", tmp_path / "valid_loss.png",
                             language_colors(list(many)))
    rows = [{"name": "en_XX", "loss": 6.0, "ppl": 403.4}, {"name": "de_DE", "loss": 7.0,
                                                            "ppl": 1096.6}]
    page = write_page(tmp_path, [figure], "validation", rows, [], [("kind", "pretrain")],
                      tmp_path).read_text()
    assert "<th>mean of 2</th><th>6.5000</th>" in page
    assert "<figcaption>Validation loss per language at each validation.</figcaption>" in page
    assert "<td>kind</td>" in page


# ---- metrics.jsonl across starts -------------------------------------------------------------

def write_log(path: Path, records: list[dict], tail: bytes = b"") -> bytes:
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail
    path.write_bytes(data)
    return data


# A run killed at step 6 whose last checkpoint is at step 4 (validation every 2 steps, before the
# save): the records of steps 5 and 6 are the dead attempt's.
KILLED = [{"step": 0, "split": "valid", "lang_loss": {"en_XX": 9.0}},
          *({"step": s, "loss": 9.0 - s / 10} for s in (1, 2)),
          {"step": 2, "split": "valid", "lang_loss": {"en_XX": 8.8}},
          *({"step": s, "loss": 9.0 - s / 10} for s in (3, 4)),
          {"step": 4, "split": "valid", "lang_loss": {"en_XX": 8.6}},
          *({"step": s, "loss": 9.0 - s / 10} for s in (5, 6)),
          {"step": 6, "split": "valid", "lang_loss": {"en_XX": 8.4}}]


def test_a_resume_keeps_the_records_its_checkpoint_holds_and_says_what_it_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    data = write_log(path, KILLED)
    assert keep_before(path, 5) == [f"{path}: dropped 3 record(s) of steps 5-6, logged after "
                                    "the checkpoint this start resumes from"]
    assert path.read_bytes() == data[:data.index(b'{"step": 5')]  # the kept lines byte for byte
    inode = path.stat().st_ino
    assert keep_before(path, 5) == [] and path.stat().st_ino == inode  # nothing to drop: untouched
    assert keep_before(tmp_path / "none.jsonl", 5) == []


def test_a_fresh_start_keeps_nothing_of_an_attempt_that_saved_no_checkpoint(tmp_path, capsys):
    """add-language killed before its first checkpoint, then run again with other --steps: the
    new start validates at step 0 again and logs only its own records."""
    path = tmp_path / "metrics.jsonl"
    write_log(path, KILLED)
    logger = MetricsLogger(tmp_path, LoggingConfig(), True, {}, first_step=0)
    assert capsys.readouterr().out == (f"{path}: dropped 10 record(s) of steps 0-6, logged by an "
                                       "earlier start that saved no checkpoint\n")
    logger.log({"step": 0, "split": "valid", "lang_loss": {"en_XX": 9.1}})
    assert [r["lang_loss"] for r in read_records(path)] == [{"en_XX": 9.1}]


def test_a_torn_last_line_is_dropped_and_the_next_record_gets_its_own_line(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    whole = write_log(path, KILLED[:7])  # the last line: the validation at step 4
    path.write_bytes(whole[:-40])  # what a crash mid-write leaves
    torn = len(json.dumps(KILLED[6])) + 1 - 40
    logger = MetricsLogger(tmp_path, LoggingConfig(), True, {}, first_step=5)
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{path}:7: dropped a torn last line ({torn} bytes, not JSON (")
    logger.log({"step": 5, "loss": 8.5})
    assert [r["step"] for r in read_records(path)] == [0, 1, 2, 2, 3, 4, 5]
    # a whole last record that lost only its newline is kept, and the next one starts a line
    write_log(path, KILLED[:2], tail=json.dumps(KILLED[2]).encode())
    assert keep_before(path, 5) == []
    assert [r["step"] for r in read_records(path)] == [0, 1, 2]


def test_a_bad_line_before_the_last_is_refused_naming_it_and_nothing_is_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in KILLED]
    lines[3] = lines[3][:20]  # an edit by hand
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    with pytest.raises(MetricsError, match=rf"^{path}:4: not JSON \(.*\); fix or delete that line$"):
        keep_before(path, 5)
    assert path.read_bytes() == before


@pytest.mark.parametrize(("line", "number", "problem"), [
    (b'{"step": 3, "loss": 8.', 3, "not JSON (Expecting"),
    (b'[1, 2]', 3, 'not a record (a JSON object with an integer "step")'),
    (b'{"loss": 8.0}', 3, 'not a record'),
    (b'{"step": "3"}\n{"step": 4}', 3, 'not a record'),
    (b'\xff\xfe{"step": 3}', 3, "not JSON ("),
])
def test_the_reader_names_the_file_and_line_of_what_it_cannot_parse(tmp_path, line, number,
                                                                    problem):
    path = tmp_path / "metrics.jsonl"
    write_log(path, KILLED[:2], tail=line)
    last = b"\n" not in line
    hint = ("a torn last line (what a crash mid-write leaves) is dropped when the run resumes"
            if last else "fix or delete that line")
    with pytest.raises(MetricsError) as caught:
        read_records(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{number}: {problem}") and message.endswith(hint)
    assert "\n" not in message


def test_report_names_the_file_and_line_in_one_line(tmp_path, capsys):
    from xmod_pretrain.evaluation.report import main

    path = tmp_path / "metrics.jsonl"
    write_log(path, KILLED[:2], tail=b'{"step": 2, "lo')
    assert main(["--from", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"xmod_pretrain report: error: {path}:3: not JSON (")


def test_tensorboard_hides_what_a_stopped_attempt_logged_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = LoggingConfig(tensorboard=True)
    first = MetricsLogger(tmp_path, cfg, True, {}, first_step=0)
    for step in range(1, 7):  # killed after step 6; its checkpoint is at step 4
        first.log({"step": step, "loss": 9.0})
    first.close()
    resumed = MetricsLogger(tmp_path, cfg, True, {}, first_step=5)
    for step in (5, 6, 7):
        resumed.log({"step": step, "loss": 7.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [
        (1, 9.0), (2, 9.0), (3, 9.0), (4, 9.0), (5, 7.0), (6, 7.0), (7, 7.0)]
    assert [r["step"] for r in read_records(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6, 7]


def eventually(condition, timeout_s: float = 60.0) -> bool:
    """``condition`` within ``timeout_s``: wandb's service process writes a run's file, and on a
    busy machine the last records land there after ``finish()`` has returned."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_wandb_keeps_one_run_per_run_directory_and_a_resume_rewinds_it(tmp_path, monkeypatch):
    """Offline, as the default: wandb records the rewind (its branch point) in the resumed
    start's run file, and ``wandb sync`` applies it on the server."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = LoggingConfig(wandb=True)
    first = MetricsLogger(tmp_path, cfg, True, {}, first_step=0)
    run_id = first.wandb.id
    first.log({"step": 1, "loss": 9.0})
    first.close()
    assert (tmp_path / WANDB_ID_FILE).read_text() == f"{run_id}\n"
    resumed = MetricsLogger(tmp_path, cfg, True, {}, first_step=5)
    moment = resumed.wandb.settings.resume_from
    assert (resumed.wandb.id, moment.run, moment.metric, moment.value) == (run_id, run_id,
                                                                            "_step", 5)
    first_file = Path(first.wandb.dir).parent / f"run-{run_id}.wandb"
    resumed_file = Path(resumed.wandb.dir).parent / f"run-{run_id}.wandb"
    resumed.close()
    assert resumed_file != first_file and b"branch_point" not in first_file.read_bytes()
    assert eventually(lambda: b"branch_point" in resumed_file.read_bytes())
    fresh = MetricsLogger(tmp_path, cfg, True, {}, first_step=0)  # a fresh start: a new run
    assert fresh.wandb.id != run_id and fresh.wandb.settings.resume_from is None
    fresh.close()
