"""A preparation killed half-way resumes where it stopped; array tasks share one folder and the
last writes the manifest; --add-language appends one language. Each ends byte-identical to one
preparation on one machine."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep import record, stopping
from data_prep.prepare import DataPrepError, Task, add_language, main, prepare
from tests.conftest import REPO
from xmod_core.atomic import temporary_name
from xmod_core.shards import MANIFEST

ARGS = ["--vocab-size", "500", "--workers", "1", "--valid-fraction", "0.1"]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path: equal dicts are byte-identical folders."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def cli(*argv: str) -> int:
    return main([*argv, *ARGS])


@pytest.fixture(scope="module")
def one_machine(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus prepared in one go: what every other way must equal."""
    out = tmp_path_factory.mktemp("one") / "data"
    assert cli("--source", str(tiny_corpus), "--out", str(out)) == 0
    return out


def test_tasks_share_the_languages_and_the_last_one_writes_the_manifest(tiny_corpus, one_machine,
                                                                        tmp_path, capsys):
    out = tmp_path / "data"
    source = ["--source", str(tiny_corpus), "--out", str(out)]
    assert cli(*source, "--task", "1/2") == 1  # the tokenizer comes first, from one process
    assert "run the same prepare command with --tokenizer-only first" in capsys.readouterr().err
    assert cli(*source, "--tokenizer-only") == 0
    assert cli(*source, "--task", "1/2") == 0
    assert not (out / MANIFEST).exists()
    assert "task 1/2 done" in capsys.readouterr().out
    # A task started elsewhere names the same folder another way: the same request.
    assert cli("--source", f"{tiny_corpus}/", "--out", str(out), "--task", "0/2") == 0
    assert files(out) == files(one_machine)
    assert cli(*source, "--task", "0/2") == 0  # a task run again: nothing changes
    assert files(out) == files(one_machine)


def test_a_task_starting_while_another_writes_the_request_joins_it(tiny_corpus, one_machine,
                                                                    tmp_path):
    """The array's tasks start together: one that finds only the first one's temporary request
    file takes the folder for this preparation's, not for someone else's non-empty folder."""
    out = tmp_path / "data"
    out.mkdir()
    (out / temporary_name(record.REQUEST_FILE, "12345")).write_text("{")
    given = ["--source", str(tiny_corpus), "--out", str(out), "--tokenizer",
             str(one_machine / "sentencepiece.bpe.model")]
    assert cli(*given, "--task", "0/2") == 0
    (out / temporary_name(record.REQUEST_FILE, "12345")).unlink()  # the other task, done
    assert cli(*given, "--task", "1/2") == 0
    shards = {name: data for name, data in files(out).items() if name.endswith(".bin")}
    assert shards == {n: d for n, d in files(one_machine).items() if n.endswith(".bin")}


@pytest.mark.parametrize("spec", ["2/2", "a/2", "1", "0/0"])
def test_a_malformed_task_is_refused(tiny_corpus, tmp_path, capsys, spec):
    assert cli("--source", str(tiny_corpus), "--out", str(tmp_path / "d"), "--task", spec) == 1
    assert f"--task {spec!r}: expected INDEX/COUNT" in capsys.readouterr().err


@pytest.fixture(scope="module")
def long_second_language(tiny_corpus, one_machine, tmp_path_factory) -> tuple[Path, Path]:
    """(the tiny corpus with el_GR, its second language, 7 MB: a fraction of a second of encoding
    for a stop to land in, and its preparation in one go with one_machine's tokenizer)."""
    corpus = tmp_path_factory.mktemp("long") / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    (corpus / "el_GR.txt").write_text((tiny_corpus / "el_GR.txt").read_text() * 40)
    out = corpus.parent / "one"
    assert cli("--source", str(corpus), "--out", str(out), "--tokenizer",
               str(one_machine / "sentencepiece.bpe.model")) == 0
    return corpus, out


@pytest.mark.integration
@pytest.mark.parametrize("stop", ["kill -9", "Ctrl-C", "SIGTERM"])
def test_a_preparation_killed_half_way_resumes_to_the_same_bytes(long_second_language,
                                                                 one_machine, tmp_path, stop):
    """A first preparation, stopped after its first language: kill -9 of the process, Ctrl-C to
    its process group (it and its encoding workers) or SIGTERM to it alone (scancel, a time
    limit), which must keep what is done too, without a traceback."""
    corpus, one_go = long_second_language
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "data_prep.prepare", "--source", str(corpus), "--out",
           str(out), "--tokenizer", str(one_machine / "sentencepiece.bpe.model"), *ARGS]
    workers = [] if stop == "kill -9" else ["--workers", "2"]
    proc = subprocess.Popen([*cmd, *workers], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(f"*/{record.DONE_FILE}")):  # the first language is done
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    if stop == "kill -9":
        os.kill(proc.pid, signal.SIGKILL)
    elif stop == "Ctrl-C":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    if stop != "kill -9":
        status, what = (130, "interrupted") if stop == "Ctrl-C" else (143, "terminated")
        assert proc.returncode == status and "Traceback" not in stderr, stderr
        assert re.search(rf"prepare: {what}; .*data keeps its tokenizer and the [123] "
                         r"language\(s\) finished: the same command resumes", stderr), stderr
    done = {p.parent.name for p in out.glob(f"*/{record.DONE_FILE}")}
    assert 0 < len(done) < 4 and not (out / MANIFEST).exists()
    before = {lang: (out / lang / "train.bin").stat().st_mtime_ns for lang in done}
    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(done)} of 4 language(s) done already" in resumed.stderr
    assert {lang: (out / lang / "train.bin").stat().st_mtime_ns for lang in done} == before
    assert files(out) == files(one_go)


def test_a_signal_stops_at_the_next_check_and_a_second_one_at_once():
    """The first signal is only recorded (an exception raised wherever it lands could leave the
    encoding pool's locks held); the second stops at once; outside, the old handlers are back."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(stopping.Terminated):
        with stopping.stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(stopping.Terminated):
                list(stopping.checked(range(3)))
            with pytest.raises(stopping.Terminated):  # still asked: every check raises it
                stopping.check()
            os.kill(os.getpid(), signal.SIGINT)  # a second signal: the first one's stop, now
            pytest.fail("a second signal must stop at once")
    assert signal.getsignal(signal.SIGTERM) is before
    stopping.check()  # nothing asked any more
    assert stopping.exit_status(stopping.Terminated()) == 143
    assert stopping.exit_status(KeyboardInterrupt()) == 130


def test_another_request_in_a_started_folder_is_refused_naming_what_differs(
        tiny_corpus, tmp_path, capsys):
    out = tmp_path / "data"
    assert cli("--source", str(tiny_corpus), "--out", str(out), "--tokenizer-only") == 0
    assert cli("--source", str(tiny_corpus), "--out", str(out), "--languages", "en_XX") == 1
    err = capsys.readouterr().err
    assert f"{out} holds a preparation of another request (languages " in err
    assert "pass --overwrite to start again" in err
    assert cli("--source", str(tiny_corpus), "--out", str(out), "--task", "0/2") == 0
    assert {"de_DE", "en_XX"} <= {p.name for p in out.iterdir()}
    assert cli("--source", str(tiny_corpus), "--out", str(out), "--languages", "el_GR",
               "--overwrite") == 0
    # Nothing of the first request is left or reused: its languages' folders are gone, and the
    # tokenizer was trained again, on el_GR alone.
    assert list(json.loads((out / MANIFEST).read_text())["languages"]) == ["el_GR"]
    assert not {"de_DE", "en_XX"} & {p.name for p in out.iterdir()}
    sample = json.loads((out / record.SAMPLE_FILE).read_text())["bytes"]
    assert list(sample) == ["el_GR"]
    assert json.loads((out / MANIFEST).read_text())["tokenizer"]["sample"]["bytes"] == sample


def test_a_first_preparation_failing_late_keeps_the_languages_done(tiny_corpus, one_machine,
                                                                   tmp_path, capsys, caplog):
    """Bad text in the last language: the languages before it stay, and the same command resumes
    once the file is mended, to the bytes of one preparation."""
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    last = corpus / "ru_RU.txt"
    good = last.read_bytes()
    last.write_bytes(b"\xff\n" + good)  # its first block: the one read as en_XX's shards close
    out = tmp_path / "data"
    given = ["--source", str(corpus), "--out", str(out), "--tokenizer",
             str(one_machine / "sentencepiece.bpe.model")]
    assert cli(*given) == 1
    err = capsys.readouterr().err
    assert "ru_RU.txt is not UTF-8" in err
    assert sorted(p.parent.name for p in out.glob(f"*/{record.DONE_FILE}")) == \
        ["de_DE", "el_GR", "en_XX"]
    assert f"{out} keeps its tokenizer and the 3 language(s) finished: the same command " \
        "resumes from there" in err
    last.write_bytes(good)
    caplog.set_level(logging.INFO, logger="data_prep.prepare")
    assert cli(*given) == 0
    assert "resuming: 3 of 4 language(s) done already" in caplog.text
    shards = {name: data for name, data in files(out).items() if name.endswith(".bin")}
    assert shards == {n: d for n, d in files(one_machine).items() if n.endswith(".bin")}


def test_add_language_appends_one_language_with_the_folders_tokenizer(tiny_corpus, one_machine,
                                                                      tmp_path, capsys):
    out = tmp_path / "data"
    prepare(tiny_corpus, out, languages=["de_DE", "el_GR", "en_XX"], valid_fraction=0.1,
            tokenizer=one_machine / "sentencepiece.bpe.model", workers=1)
    before = files(out)
    assert main(["--add-language", "ru_RU", "--source", str(tiny_corpus), "--out", str(out)]) == 0
    after = files(out)
    assert {name: data for name, data in after.items() if name in before
            and name not in (MANIFEST, record.REQUEST_FILE)} == \
        {name: data for name, data in before.items() if name not in (MANIFEST, record.REQUEST_FILE)}
    for split in ("train", "valid"):  # the same bytes as ru_RU prepared with the others
        assert after[f"ru_RU/{split}.bin"] == files(one_machine)[f"ru_RU/{split}.bin"]
    manifest = json.loads(after[MANIFEST])
    assert list(manifest["languages"]) == ["de_DE", "el_GR", "en_XX", "ru_RU"]
    assert manifest["languages"]["ru_RU"] == json.loads(files(one_machine)[MANIFEST])[
        "languages"]["ru_RU"]
    with pytest.raises(DataPrepError, match=f"ru_RU is prepared in {out} already"):
        add_language(tiny_corpus, out, "ru_RU")
    with pytest.raises(DataPrepError, match=f"{out} has rus_Cyrl's language as ru_RU already"):
        add_language(tiny_corpus, out, "rus_Cyrl")
    assert main(["--add-language", "ru_RU", "--source", str(tiny_corpus), "--out",
                 str(tmp_path / "nothing")]) == 1
    assert "does not exist: the folder is not prepared" in capsys.readouterr().err
    assert main(["--add-language", "ru_RU", "--languages", "en_XX", "--source",
                 str(tiny_corpus), "--out", str(out)]) == 1
    assert "drop --languages" in capsys.readouterr().err


def test_task_share_takes_every_count_th_language():
    languages = [f"l{i}" for i in range(7)]
    shares = [Task(i, 3).share(languages) for i in range(3)]
    assert sorted(sum(shares, [])) == languages and shares[0] == ["l0", "l3", "l6"]
