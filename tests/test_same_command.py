"""Issue 16: the same command gives the same weights. Automatic choices (precision=auto, parallel,
threads, the tokenizer) are decided once from what the machine is, recorded in OUT/config.json, and
reused by --resume, torchrun restarts and a recipe's later stages; a contradiction is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

from openvision2.errors import UserError
from openvision2.precision import auto_precision, cpu_has_native_bf16
from openvision2.train.loop import train
from scaleout_helpers import final_weights, losses
from test_run_safety import cli_error, ov2, quick, start_ov2, train_args, wait_for_step

AUTO = auto_precision(torch.device("cpu"))
OTHER = {"bf16": "fp32", "fp32": "bf16"}[AUTO]


def assert_same_weights(a, b) -> None:
    got, expected = final_weights(a), final_weights(b)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_same_command_twice_gives_bitwise_the_same_weights(tmp_path, precision):
    if precision == "bf16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 / AMX)")
    train(quick(steps=3, precision=precision), tmp_path / "a", progress=False)  # in this process
    result = ov2(*train_args(quick(steps=3, precision=precision), tmp_path / "b"))  # in another
    assert result.returncode == 0, result.stderr
    assert_same_weights(tmp_path / "a", tmp_path / "b")


def test_sigkill_and_resume_with_precision_auto_is_the_uninterrupted_run(tmp_path):
    config = quick(steps=10, ckpt_every=2, precision="auto")
    train(config, tmp_path / "whole", progress=False)
    process = start_ov2(*train_args(config, tmp_path / "killed"))
    wait_for_step(tmp_path / "killed", 5, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    train(config, tmp_path / "killed", progress=False, resume=True)  # another process than the killed one
    assert_same_weights(tmp_path / "killed", tmp_path / "whole")
    assert losses(tmp_path / "killed") == losses(tmp_path / "whole")


def test_choices_are_recorded_printed_first_and_a_contradiction_is_refused(tmp_path, capsys):
    train(quick(steps=2, ckpt_every=2, precision="auto"), tmp_path, progress=False)
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith(f"run {tmp_path}: micro-batch 8 x accumulation 1 per rank; precision {AUTO} "
                                 f"(asked auto), parallel none")
    resolved = json.loads((tmp_path / "config.json").read_text())["resolved"]
    assert resolved == {"precision": AUTO, "parallel": "none", "threads": 1, "world_size": 1, "micro_batch": 8,
                        "grad_accum": 1, "batch_split": "micro-batch 8 x accumulation 1 per rank",
                        "tokenizer": "bpe vocab 128"}
    refused = cli_error(capsys, *train_args(quick(steps=4, ckpt_every=2, precision=OTHER), tmp_path, "--resume"))
    assert f"precision={OTHER} contradicts precision={AUTO} recorded in" in refused


def test_a_torchrun_restart_reuses_the_recorded_choices(tmp_path, monkeypatch):
    train(quick(steps=2, ckpt_every=2, precision="auto"), tmp_path, progress=False)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.raises(UserError, match=f"precision={OTHER} contradicts precision={AUTO}"):
        train(quick(steps=4, ckpt_every=2, precision=OTHER), tmp_path, progress=False)
    torch.set_num_threads(2)  # a restarted worker that starts with another thread count gets the recorded one
    train(quick(steps=4, ckpt_every=2, precision="auto"), tmp_path, progress=False)
    assert torch.get_num_threads() == 1
    assert list(losses(tmp_path)) == [1, 2, 3, 4]


def test_a_recipes_later_stage_reuses_the_first_stages_choices(tmp_path):
    from openvision2.train.recipes import run_recipe

    tiny = ["train_samples=64", "val_samples=8", "batch_size=8", "evals=", "show_captions=1", "tensorboard=false",
            "bpe_vocab_size=128", "num_workers=0"]
    run_recipe("tiny-cpu", tmp_path, tiny, steps=1, progress=False)
    # As if the first stage had run where auto meant the other precision: the later stage must follow it.
    first = json.loads((tmp_path / "stage-32" / "config.json").read_text())
    first["resolved"]["precision"] = OTHER
    (tmp_path / "stage-32" / "config.json").write_text(json.dumps(first))
    shutil.rmtree(tmp_path / "stage-64")
    run_recipe("tiny-cpu", tmp_path, tiny, steps=1, progress=False)
    assert json.loads((tmp_path / "stage-64" / "config.json").read_text())["resolved"]["precision"] == OTHER
