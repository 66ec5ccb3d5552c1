"""What a start says about DeepSpeed's op build before it waits on it."""

from __future__ import annotations

from xmod_pretrain.training.distributed import announce_cpu_comm_build


def test_a_build_lock_left_behind_is_named_with_what_to_do(tmp_path, monkeypatch, capsys):
    """torch waits, silently and for ever, on the lock file of a build that was killed."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.touch()
    announce_cpu_comm_build()
    said = capsys.readouterr().out
    assert f"waiting for another process that builds DeepSpeed's CPU communication op in " \
           f"{lock.parent} (if none does, a build was killed: remove {lock})" in said
