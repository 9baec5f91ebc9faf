"""Issue 24: the run-directory lock, what --resume and --overwrite may touch, what a resume may change,
and metrics.jsonl after a kill. Each test failed on the code before the fix (see docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from openvision2.errors import UserError
from openvision2.train import rundir
from openvision2.train.loop import train
from scaleout_helpers import losses, tiny_config
from test_run_safety import cli_error, latest_name, start_ov2, train_args, wait_for_step


def quick(**changes):
    return tiny_config(evals="", **changes)


# --- 1. the lock never follows a planted link, and is never a directory ---

def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path, capsys):
    out, victim = tmp_path / "run", tmp_path / "victim"
    out.mkdir()
    victim.write_text("precious\n")
    (out / ".lock").symlink_to(victim)
    error = cli_error(capsys, *train_args(quick(steps=2), out, "--resume"))
    assert ".lock is a symbolic link" in error
    assert victim.read_text() == "precious\n"
    (out / ".lock").unlink()
    (out / ".lock").mkdir()
    assert ".lock is a directory" in cli_error(capsys, *train_args(quick(steps=2), out, "--resume"))


def test_the_lock_is_held_against_this_process_too(tmp_path):
    with rundir.locked(tmp_path):
        with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            with rundir.locked(tmp_path):
                pass
    with rundir.locked(tmp_path):  # released on exit
        pass


# --- 2. kill -9 with DataLoader workers, then an immediate resume ---

def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def test_kill_9_with_workers_then_an_immediate_resume_is_accepted(tmp_path):
    """What torchrun --max-restarts does: restart at once. The workers never hold the lock, and die
    with their main process."""
    config = quick(steps=2000, ckpt_every=1, num_workers=1)
    process = start_ov2(*train_args(config, tmp_path))
    wait_for_step(tmp_path, 2, process)
    workers = _children(process.pid)
    assert workers, "the run has a DataLoader worker"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()  # not communicate(): the worker holds the pipes too, and would be waited for
    process.stdout.close()
    process.stderr.close()
    step = int(latest_name(tmp_path).split("-")[1])
    summary = train(quick(steps=step + 1, ckpt_every=1, num_workers=1), tmp_path, progress=False, resume=True)
    assert summary["step"] == step + 1
    deadline = time.monotonic() + 2
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in workers), "an orphaned worker outlived its killed run"


# --- 3, 4, 18. --resume and --overwrite touch only a run of ours ---

def users_project(path: Path) -> dict[Path, bytes]:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "model.pt").write_bytes(b"someone else's weights")
    (path / "config.json").write_text('{"lr": 0.1}\n')
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_resume_and_overwrite_refuse_a_directory_that_is_not_a_run(tmp_path, capsys, flag):
    before = users_project(tmp_path)
    error = cli_error(capsys, *train_args(quick(steps=2), tmp_path, flag))
    assert "is not a run directory of ov2" in error and "choose another --out" in error
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert "--overwrite" not in cli_error(capsys, *train_args(quick(steps=2), tmp_path))  # only for a run


def test_resume_into_an_empty_or_missing_directory_starts_a_run(tmp_path):
    train(quick(steps=2), tmp_path / "missing", progress=False, resume=True)
    (tmp_path / "empty").mkdir()
    train(quick(steps=2), tmp_path / "empty", progress=False, resume=True)
    assert (tmp_path / "empty" / rundir.MARKER).is_file() and list(losses(tmp_path / "empty")) == [1, 2]


def test_a_run_from_before_the_marker_is_still_a_run(tmp_path):
    """Older runs have no marker: their training checkpoints (DCP + per-rank state) say they are ours."""
    train(quick(steps=2, ckpt_every=2), tmp_path, progress=False)
    (tmp_path / rundir.MARKER).unlink()
    (tmp_path / "config.json").write_text("{}")  # not what identifies it
    assert rundir.is_run(tmp_path)
    train(quick(steps=4, ckpt_every=2), tmp_path, progress=False, resume=True)
    assert latest_name(tmp_path) == "step-0000004"


def test_overwrite_never_follows_a_linked_checkpoints_directory(tmp_path, capsys):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    train(quick(steps=2, ckpt_every=2), out, progress=False)
    (out / "checkpoints").rename(elsewhere)
    (out / "checkpoints").symlink_to(elsewhere)
    before = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))
    error = cli_error(capsys, *train_args(quick(steps=2), out, "--overwrite"))
    assert "checkpoints is a symbolic link" in error
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == before


# --- 9. a resume may not change what the steps already taken mean ---

@pytest.mark.parametrize("key, value", [("seed", "7"), ("base_lr", "0.1"), ("keep_ratio", "0.9")])
def test_resume_refuses_a_change_of_what_was_trained(tmp_path, capsys, key, value):
    config = quick(steps=2, ckpt_every=2)
    train(config, tmp_path, progress=False)
    before = (tmp_path / "config.json").read_text()
    error = cli_error(capsys, *train_args(quick(steps=4, ckpt_every=2), tmp_path, "--resume"), f"{key}={value}")
    assert f"--resume with " in error and f"{key}={value}" in error and "start a new run directory" in error
    assert (tmp_path / "config.json").read_text() == before and latest_name(tmp_path) == "step-0000002"


def test_resume_may_extend_the_run_and_change_its_bookkeeping(tmp_path):
    train(quick(steps=2, ckpt_every=2), tmp_path, progress=False)
    train(quick(steps=4, ckpt_every=1, log_every=2, keep_checkpoints=3, eval_every=2, num_workers=1), tmp_path,
          progress=False, resume=True)
    assert latest_name(tmp_path) == "step-0000004"
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["steps"] == 4


# --- 22. kill -9 during a save, then resume: every step once in metrics.jsonl ---

def test_a_resume_drops_the_records_of_the_steps_it_does_again(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    records = [{"step": 0, "val_loss": 5.0}, *({"step": s, "loss": 1.0 / s} for s in range(1, 7))]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 7, "lo')  # torn by a kill
    assert rundir.rewind_metrics(tmp_path, 4) == {"step", "loss"}
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == records[:5]
    assert rundir.rewind_metrics(tmp_path, 0) == {"step", "val_loss"}
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == records[:1]


def test_a_resume_drops_the_tensorboard_events_of_the_steps_it_does_again(tmp_path):
    """TensorBoard shows each step once after a resume: the first session's events after the resumed
    step are purged (SummaryWriter's purge_step), as metrics.jsonl's records are."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from openvision2.train.metrics import MetricsLog

    first = MetricsLog(tmp_path, tensorboard=True)
    for step in range(1, 5):
        first.write({"step": step, "loss": float(step)})
    first.close()
    again = MetricsLog(tmp_path, tensorboard=True, resumed_at=2)  # the run resumed from step 2's checkpoint
    for step in (3, 4):
        again.write({"step": step, "loss": 10.0 * step})
    again.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


# --- 19, 20. sizes and seeds within bounds, in one line ---

@pytest.mark.parametrize("override, message", [
    ("seed=99999999999999999999", "seed must be in [0, "), ("text_len=100000", "text_len must be in [3, "),
    ("image_size=100000", "image_size must be in [1, "), ("batch_size=100000000", "batch_size must be in [1, "),
    ("val_samples=10000000", "val_samples must be in [1, "), ("alt_text_len=100000", "alt_text_len must be in [3, ")])
def test_huge_sizes_and_seeds_are_one_line(tmp_path, capsys, override, message):
    assert message in cli_error(capsys, "train", "--out", str(tmp_path), "--no-progress", override)
    assert not any(tmp_path.iterdir())  # refused before anything was built or written


def test_every_preset_and_recipe_stage_is_within_the_bounds():
    from openvision2.train.presets import PRESETS
    from openvision2.train.recipes import RECIPES

    for make in PRESETS.values():
        make().validate()
    for make in RECIPES.values():
        for stage in make():
            stage.config.validate()
