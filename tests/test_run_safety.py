"""Issue 10: a run directory is never hijacked, lost or silently mixed, and loading never executes
code. The multi-process cases (SIGTERM to the process group, two runs into one directory) run real
`ov2 train` processes."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from openvision2.checkpoint import load_checkpoint
from openvision2.cli import main
from openvision2.errors import UserError
from openvision2.train import state as ckpt
from openvision2.train.faults import PREEMPTED_EXIT
from openvision2.train.loop import train
from scaleout_helpers import TEST_ENV, losses, overrides, tiny_config


def quick(**changes):
    return tiny_config(evals="", **changes)


def ov2(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openvision2.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **TEST_ENV}, timeout=timeout)


def start_ov2(*args: str) -> subprocess.Popen:
    """`ov2 ...` in its own process group (as a job step under SLURM is)."""
    return subprocess.Popen([sys.executable, "-m", "openvision2.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **TEST_ENV}, start_new_session=True)


def train_args(config, out: Path, *flags: str) -> list[str]:
    return ["train", "--out", str(out), "--no-progress", *flags, *overrides(config)]


def cli_error(capsys, *args: str) -> str:
    """`ov2 ...` in this process: the one line it prints for a refused command."""
    capsys.readouterr()
    assert main(list(args)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ov2 train: error: "), lines
    return lines[0]


def wait_for_step(out: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "metrics.jsonl").is_file() and any(s >= step for s in losses(out)):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def latest_name(out: Path) -> str:
    return (out / "checkpoints" / "latest").read_text().strip()


# --- 1. loading never executes code ---

class Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # what os.system would be in an attack: a side effect


def test_a_planted_metadata_pickle_never_runs(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "executed"
    config = quick(steps=2, ckpt_every=2)
    train(config, out, progress=False)
    (out / "checkpoints" / latest_name(out) / "dcp" / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    error = cli_error(capsys, *train_args(quick(steps=4, ckpt_every=2), out, "--resume"))
    assert not marker.exists()
    assert "tampered" in error


def test_a_planted_rank_state_pickle_is_refused_and_never_runs(tmp_path, capsys):
    """Issue 24 item 17: the newest checkpoint's per-rank file is a pickle that calls a function: the
    run stops saying that checkpoint was refused (no silent fall back), and never quotes torch's advice
    to load it with weights_only=False."""
    out, marker = tmp_path / "run", tmp_path / "executed"
    train(quick(steps=4, ckpt_every=2), out, progress=False)
    (out / "checkpoints" / "step-0000004" / "rank-00000.pt").write_bytes(pickle.dumps(Planted(marker)))
    capsys.readouterr()
    assert main(train_args(quick(steps=6, ckpt_every=2), out, "--resume")) == 2
    printed = capsys.readouterr()
    assert not marker.exists() and "weights_only" not in printed.out + printed.err
    error = printed.err.strip().splitlines()
    assert len(error) == 1 and "rank-00000.pt is not a train state ov2 wrote" in error[0]
    assert "checkpoint step-0000004 is refused and nothing of it was loaded" in error[0]
    assert latest_name(out) == "step-0000004"


def test_checkpoint_state_holds_only_tensors(tmp_path):
    """Nothing in DCP needs unpickling: the optimizer's hyperparameters are not saved there."""
    train(quick(steps=2, ckpt_every=2), tmp_path, progress=False)
    metadata = ckpt.read_metadata(tmp_path / "checkpoints" / latest_name(tmp_path) / "dcp")
    assert all(type(item).__name__ == "TensorStorageMetadata" for item in metadata.state_dict_metadata.values())


# --- 3, 4. never overwrite a run ---

def test_resume_without_the_latest_pointer_continues_from_the_newest_checkpoint(tmp_path, capsys):
    train(quick(steps=4, ckpt_every=2), tmp_path, progress=False)
    (tmp_path / "checkpoints" / "latest").unlink()
    capsys.readouterr()
    train(quick(steps=6, ckpt_every=2), tmp_path, progress=False, resume=True)
    out = capsys.readouterr().out
    assert "warning: resuming from step-0000004" in out and "from scratch" not in out
    assert list(losses(tmp_path)) == [1, 2, 3, 4, 5, 6]  # continued, not restarted over the old checkpoints
    assert latest_name(tmp_path) == "step-0000006"


def test_a_fresh_run_into_a_used_directory_is_refused(tmp_path):
    train(quick(steps=2, ckpt_every=2), tmp_path, progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "config.json", tmp_path / "metrics.jsonl")}
    with pytest.raises(UserError, match="not empty .*--resume.*--overwrite"):
        train(quick(steps=4, ckpt_every=2, seed=1), tmp_path, progress=False)
    assert all(p.read_bytes() == data for p, data in before.items()) and latest_name(tmp_path) == "step-0000002"
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "config.json").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        train(quick(steps=2), unrelated, progress=False)
    assert (unrelated / "config.json").read_text() == "mine"


def test_overwrite_starts_a_new_run(tmp_path):
    train(quick(steps=4, ckpt_every=2), tmp_path, progress=False)
    train(quick(steps=2, ckpt_every=2), tmp_path, progress=False, overwrite=True)
    assert list(losses(tmp_path)) == [1, 2]  # one run in metrics.jsonl, not two
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-0000002"]


def test_a_recipe_refuses_a_directory_it_does_not_own(tmp_path):
    from openvision2.train.recipes import run_recipe

    tiny = ["train_samples=64", "val_samples=8", "batch_size=8", "evals=", "bpe_vocab_size=128", "num_workers=0"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a run")
    with pytest.raises(UserError, match="is not empty .*not a recipe's directory"):
        run_recipe("tiny-cpu", tmp_path / "mine", tiny, steps=1, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "recipe.json").write_text('{"recipe": "l14"}')
    with pytest.raises(UserError, match="holds recipe 'l14', not 'tiny-cpu'"):
        run_recipe("tiny-cpu", tmp_path / "other", tiny, steps=1, progress=False)


# --- 5, 6. two runs, SIGTERM to the process group (real processes) ---

def test_a_second_run_into_a_locked_directory_gets_one_line(tmp_path, capsys):
    first = start_ov2(*train_args(quick(steps=2000, ckpt_every=1000), tmp_path))
    try:
        wait_for_step(tmp_path, 1, first)
        second = cli_error(capsys, *train_args(quick(steps=2000, ckpt_every=1000), tmp_path, "--resume"))
        assert f"in use by another run (pid {first.pid})" in second
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.communicate()


def test_sigterm_to_the_process_group_saves_and_exits_75(tmp_path):
    process = start_ov2(*train_args(quick(steps=2000, ckpt_every=1000, num_workers=1), tmp_path))
    wait_for_step(tmp_path, 2, process)
    os.killpg(process.pid, signal.SIGTERM)  # what scancel does: the DataLoader worker gets it too
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT == 75, stderr
    assert "Traceback" not in stderr
    saved = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    step = torch.load(saved / "rank-00000.pt", weights_only=True)["step"]
    assert step >= 2 and step == max(losses(tmp_path))


# --- 7. durability ---

@pytest.mark.parametrize("damaged", ["dcp/__0_0.distcp", "dcp/.metadata", "rank-00000.pt", "model.safetensors"])
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, damaged):
    train(quick(steps=4, ckpt_every=2), tmp_path, progress=False)
    path = tmp_path / "checkpoints" / "step-0000004" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    train(quick(steps=6, ckpt_every=2), tmp_path, progress=False, resume=True)
    out = capsys.readouterr().out
    assert "warning: resuming from step-0000002" in out and "at step 2" in out
    assert latest_name(tmp_path) == "step-0000006"


def test_every_published_file_is_fsynced_before_latest_names_it(tmp_path, monkeypatch):
    synced, real_fsync = set(), os.fsync

    def fsync(fd):
        synced.add(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    train(quick(steps=2, ckpt_every=2), tmp_path, progress=False)
    published = tmp_path / "checkpoints" / "step-0000002"
    files = [p for p in published.rglob("*") if p.is_file()]
    # fsync happened under the temporary name; the rename keeps the inode
    expected = {str(published.parent / f".tmp-{published.name}" / p.relative_to(published)) for p in files}
    assert expected <= synced
    assert str(tmp_path / "checkpoints") in synced and str(tmp_path / "checkpoints" / ".latest.tmp") in synced


# --- 8. disk full ---

def fake_disk(monkeypatch, checkpoints_capacity: int, seen: list):
    """The filesystem holds `checkpoints_capacity` bytes of checkpoints; records what each save saw."""
    monkeypatch.setattr(ckpt, "free_bytes", lambda path: checkpoints_capacity - ckpt.directory_bytes(Path(path)))
    real_save = ckpt.dcp.save

    def save(state, checkpoint_id):
        checkpoints = Path(checkpoint_id).parent.parent
        seen.append((len(list(checkpoints.glob("step-*"))), ckpt.directory_bytes(checkpoints)))
        return real_save(state, checkpoint_id=checkpoint_id)

    monkeypatch.setattr(ckpt.dcp, "save", save)


def checkpoint_bytes(tmp_path) -> int:
    train(quick(steps=2, ckpt_every=2), tmp_path / "probe", progress=False)
    return ckpt.directory_bytes(tmp_path / "probe" / "checkpoints" / "step-0000002")


def test_a_disk_with_room_for_keep_checkpoints_still_progresses(tmp_path, monkeypatch):
    size, seen = checkpoint_bytes(tmp_path), []
    fake_disk(monkeypatch, int(size * 2.5), seen)
    train(quick(steps=8, ckpt_every=2, keep_checkpoints=2), tmp_path / "run", progress=False)
    assert latest_name(tmp_path / "run") == "step-0000008"
    assert all(used + size <= size * 2.5 for _, used in seen)  # every save fitted: old ones pruned first
    assert [count for count, _ in seen] == [0, 1, 1, 1]


def test_disk_full_is_one_line_and_keeps_latest(tmp_path, monkeypatch):
    size, seen = checkpoint_bytes(tmp_path), []
    fake_disk(monkeypatch, int(size * 1.5), seen)
    with pytest.raises(UserError, match="^disk full: saving step 4 needs"):
        train(quick(steps=6, ckpt_every=2, keep_checkpoints=1), tmp_path / "run", progress=False)
    assert latest_name(tmp_path / "run") == "step-0000002"


def test_a_first_save_on_a_full_disk_is_one_line_and_leaves_no_partial_save(tmp_path, monkeypatch, capsys):
    """Issue 24 item 8: no checkpoint yet to measure, so the first save is checked against an estimate;
    and a disk that fills during the write (inside DCP) is one line, the partial save removed."""
    from torch.distributed.checkpoint import filesystem

    monkeypatch.setattr(ckpt, "free_bytes", lambda path: 1000)
    error = cli_error(capsys, *train_args(quick(steps=2, ckpt_every=2), tmp_path / "a"))
    assert "disk full: saving step 2 needs about" in error
    assert list((tmp_path / "a" / "checkpoints").iterdir()) == []
    monkeypatch.undo()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filesystem, "_write_item", no_space)
    error = cli_error(capsys, *train_args(quick(steps=2, ckpt_every=2), tmp_path / "b"))
    assert "disk full while saving step 2" in error and "--resume" in error
    assert list((tmp_path / "b" / "checkpoints").iterdir()) == []


# --- 9. a checkpoint whose weights are not finite is never published ---

def test_non_finite_weights_are_never_published(tmp_path, monkeypatch):
    """An update that overflows the weights while the loss and gradient were finite (what a huge
    learning rate or a bf16 overflow does): the checkpoint after it is refused, `latest` stays."""
    from openvision2.train import loop

    def overflowing_optimizer(model, *args, **kwargs):
        optimizer = real_build(model, *args, **kwargs)
        real_step, calls = optimizer.step, []

        def step(*a, **k):
            real_step(*a, **k)
            calls.append(1)
            if len(calls) == 3:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("inf"))

        optimizer.step = step
        return optimizer

    real_build = loop.build_optimizer
    monkeypatch.setattr(loop, "build_optimizer", overflowing_optimizer)
    with pytest.raises(UserError, match="not finite after step 4"):
        train(quick(steps=4, ckpt_every=2), tmp_path, progress=False)
    assert latest_name(tmp_path) == "step-0000002"


# --- 15. one line, never a traceback ---

def test_an_unusable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert "choose a writable --out" in cli_error(capsys, *train_args(quick(), tmp_path / "a-file" / "run"))
    if not os.path.ismount("/sys"):
        pytest.skip("no sysfs (a filesystem that refuses new directories) at /sys here")
    assert "choose a writable --out" in cli_error(capsys, *train_args(quick(), Path("/sys/ov2-run")))


def test_damaged_checkpoint_configs_and_init_from_are_one_line(tmp_path):
    train(quick(steps=2, ckpt_every=2), tmp_path / "run", progress=False)
    directory = tmp_path / "run" / "checkpoints" / "step-0000002"
    meta = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**meta, "model": {**meta["model"], "decoder": "nano"}}))
    with pytest.raises(UserError, match="do not match the model"):
        load_checkpoint(directory)
    (directory / "config.json").write_text(json.dumps({"step": 2}))
    with pytest.raises(UserError, match="has no `model` section"):
        load_checkpoint(directory)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="cannot initialise from .*unreadable"):
        train(quick(steps=2, init_from=str(directory)), tmp_path / "next", progress=False)
