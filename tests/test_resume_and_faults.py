"""Exact resume after SIGKILL (at a random step, and inside a checkpoint save), SIGTERM, NaN steps,
elastic restarts."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from openvision2.train import state as train_state
from openvision2.train.config import TrainConfig
from openvision2.train.faults import TrainingDiverged
from openvision2.train.loop import train
from scaleout_helpers import final_weights, losses, tiny_config

STEPS = 12


def resumable_config(**changes):
    return tiny_config(steps=STEPS, ckpt_every=2, keep_checkpoints=2, **changes)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    train(resumable_config(), out, progress=False)
    return out


def _child(fields: dict, out: str, kill_in_save_at: int | None) -> None:
    """Forkserver child: train, optionally SIGKILLing itself in the middle of one checkpoint save
    (all shards and files written to the temporary directory, before it is published)."""
    torch.set_num_threads(1)
    if kill_in_save_at is not None:
        publish = train_state.publish

        def dying_publish(tmp: Path, final: Path) -> None:
            if final.name == f"step-{kill_in_save_at:07d}":
                os.kill(os.getpid(), signal.SIGKILL)
            publish(tmp, final)

        train_state.publish = dying_publish
    summary = train(TrainConfig(**fields), out, progress=False)
    Path(out, "summary.json").write_text(json.dumps({k: summary[k] for k in ("step", "checkpoint")}
                                                    | {"stopped": summary.get("stopped")}))
    os._exit(0)


def start_child(config, out: Path, kill_in_save_at: int | None = None):
    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["openvision2.train.loop"])
    process = context.Process(target=_child, args=(asdict(config), str(out), kill_in_save_at))
    process.start()
    return process


def wait_for_step(out: Path, step: int, process, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "metrics.jsonl").is_file() and any(s >= step for s in losses(out)):
            return
        assert process.is_alive(), "the training process ended before the step it was to be stopped at"
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def assert_same_run(out: Path, reference: Path) -> None:
    got, expected = final_weights(out), final_weights(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert losses(out) == losses(reference)  # every step's loss, bitwise, including those replayed


def test_sigkill_at_a_random_step_then_resume_is_exact(tmp_path, uninterrupted):
    kill_at = random.randint(3, STEPS - 4)  # after the step-2 checkpoint, well before the run ends
    print(f"SIGKILL after step {kill_at} was logged")
    process = start_child(resumable_config(), tmp_path)
    wait_for_step(tmp_path, kill_at, process)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert process.exitcode == -signal.SIGKILL
    train(resumable_config(), tmp_path, progress=False, resume=True)
    assert_same_run(tmp_path, uninterrupted)


def test_kill_during_a_checkpoint_save_resumes_from_the_previous(tmp_path, uninterrupted, capsys):
    process = start_child(resumable_config(), tmp_path, kill_in_save_at=6)
    process.join(timeout=120)
    assert process.exitcode == -signal.SIGKILL
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / ".tmp-step-0000006" / "dcp").is_dir()  # the save was under way
    assert (checkpoints / "latest").read_text().strip() == "step-0000004"
    train(resumable_config(), tmp_path, progress=False, resume=True)
    assert "step-0000004 at step 4" in capsys.readouterr().out  # "resumed from .../step-0000004 at step 4"
    assert not list(checkpoints.glob(".tmp-*"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r].count(4) == 1  # the resume's step-0 evaluation
    logged = [r["step"] for r in records if "loss" in r]  # the killed run had logged steps 5 and 6 already
    assert logged == list(range(1, STEPS + 1))  # every step once (issue 24 item 22)
    assert_same_run(tmp_path, uninterrupted)
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-0000010", "step-0000012"]  # pruned to 2


def test_sigterm_writes_a_checkpoint_and_returns(tmp_path):
    process = start_child(tiny_config(steps=500, ckpt_every=1000), tmp_path)
    wait_for_step(tmp_path, 2, process)
    os.kill(process.pid, signal.SIGTERM)
    process.join(timeout=120)
    assert process.exitcode == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "preempted" and 2 <= summary["step"] < 500
    latest = train_state.latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == f"step-{summary['step']:07d}"
    assert torch.load(latest / "rank-00000.pt", weights_only=True)["step"] == summary["step"]


def test_elastic_restart_resumes_by_itself(tmp_path, monkeypatch):
    train(tiny_config(steps=4, ckpt_every=2), tmp_path, progress=False)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # what torchrun sets in a restarted worker
    train(tiny_config(steps=6, ckpt_every=2), tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]


def poison(steps_to_poison):
    """build_model whose training forward returns a NaN loss on the given (1-based) steps."""
    from openvision2.train import factory

    def build(*args, **kwargs):
        model = factory.build_model(*args, **kwargs)
        calls = {"n": 0}

        def hook(module, inputs, out):
            if module.training:
                calls["n"] += 1
                if calls["n"] in steps_to_poison:
                    out = {**out, "nll_sum": out["nll_sum"] * float("nan")}
                    out["loss"] = out["nll_sum"] / (out["num_tokens"] + 1e-8)
            return out

        model.register_forward_hook(hook)
        return model

    return build


def test_nan_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr("openvision2.train.loop.build_model", poison({3, 4}))
    summary = train(tiny_config(max_bad_steps=3), tmp_path, progress=False)
    assert summary["skipped_steps"] == 2
    weights = final_weights(tmp_path)
    assert all(torch.isfinite(w).all() for w in weights.values())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "loss" in r] == [0, 0, 1, 2, 2, 2]


def test_consecutive_nan_steps_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr("openvision2.train.loop.build_model", poison(set(range(3, 100))))
    with pytest.raises(TrainingDiverged, match="3 consecutive steps.*step-0000002"):
        train(tiny_config(max_bad_steps=3, ckpt_every=2, steps=10), tmp_path, progress=False)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000002"


def test_resume_with_another_model_is_one_clear_error(tmp_path):
    from openvision2.errors import UserError

    train(tiny_config(steps=2), tmp_path, progress=False)
    with pytest.raises(UserError, match="--resume with model.decoder=nano changes the run .*used model.decoder=mu"):
        train(tiny_config(steps=4, decoder="nano"), tmp_path, progress=False, resume=True)
    # a checkpoint from before the settings were saved in it still gets the load's own one line
    config = tmp_path / "checkpoints" / "step-0000002" / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "train"}))
    with pytest.raises(UserError, match="cannot resume from .*step-0000002: it does not fit"):
        train(tiny_config(steps=4, decoder="nano"), tmp_path, progress=False, resume=True)
