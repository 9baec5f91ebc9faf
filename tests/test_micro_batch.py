"""micro_batch, the images per device per forward: how the global batch splits into ranks x
accumulation x micro-batch (train/batching.py), its one-line refusals, and a resume that keeps it."""

from __future__ import annotations

import json
import shutil

import pytest

from openvision2.errors import UserError
from openvision2.train.batching import BatchSplit, split_batch
from openvision2.train.loop import train
from scaleout_helpers import final_weights, losses, rewind_to, tiny_config


def test_the_split_follows_from_micro_batch_or_grad_accum():
    config = tiny_config(batch_size=48)
    assert split_batch(config, 1) == BatchSplit(48, 1)  # CPU, auto: the whole share, as before micro_batch
    assert split_batch(config, 2) == BatchSplit(24, 1)
    assert split_batch(tiny_config(batch_size=48, micro_batch="6"), 2) == BatchSplit(6, 4)
    assert split_batch(tiny_config(batch_size=48, grad_accum=3), 2) == BatchSplit(8, 3)  # the older setting
    assert split_batch(tiny_config(batch_size=48, grad_accum=3, micro_batch="8"), 2) == BatchSplit(8, 3)
    assert split_batch(config, 2, recorded=4) == BatchSplit(4, 6)  # a resume keeps the run's choice


@pytest.mark.parametrize("changes, world, message", [
    (dict(micro_batch="5"), 2, "24 images per rank, which micro_batch=5 does not divide"),
    (dict(micro_batch="6", grad_accum=2), 2, "micro_batch=6 and grad_accum=2 contradict each other"),
    (dict(grad_accum=5), 2, "must be divisible by 2 ranks x grad_accum 5"),
    (dict(batch_size=47), 2, "must be divisible by the 2 ranks"),
])
def test_a_batch_that_cannot_split_is_one_line(changes, world, message):
    with pytest.raises(UserError, match=message) as caught:
        split_batch(tiny_config(**{"batch_size": 48, **changes}), world)
    assert "\n" not in str(caught.value)


def test_micro_batches_give_the_whole_batch_step_and_a_resume_keeps_the_choice(tmp_path, capsys):
    """micro_batch=2 (4 micro-batches) is grad_accum=4; the run records 2, and a resume without the
    setting (auto, which alone would choose the whole batch on a CPU) continues with 2, exactly."""
    config = tiny_config(steps=4, ckpt_every=2, keep_checkpoints=4, micro_batch="2")
    train(config, tmp_path / "micro", progress=False)
    assert "micro-batch 2 x accumulation 4 per rank" in capsys.readouterr().out  # the first log line says so
    train(tiny_config(steps=4, grad_accum=4), tmp_path / "accum", progress=False)
    assert losses(tmp_path / "micro") == losses(tmp_path / "accum")
    resolved = json.loads((tmp_path / "micro" / "config.json").read_text())["resolved"]
    assert (resolved["micro_batch"], resolved["grad_accum"]) == (2, 4)

    shutil.copytree(tmp_path / "micro", tmp_path / "resumed")
    rewind_to(tmp_path / "resumed", 2)
    with pytest.raises(UserError, match="this run chose micro_batch=2"):
        train(tiny_config(steps=4, ckpt_every=2, micro_batch="4"), tmp_path / "resumed", progress=False, resume=True)
    train(tiny_config(steps=4, ckpt_every=2, keep_checkpoints=4), tmp_path / "resumed", progress=False, resume=True)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "micro")
    expected, got = final_weights(tmp_path / "micro"), final_weights(tmp_path / "resumed")
    assert all((got[name] == expected[name]).all() for name in expected)


def test_auto_on_a_gpu_takes_the_largest_micro_batch_that_fits_its_memory():
    """micro_batch=auto given a device's memory (a GPU's, passed in here on a CPU): `ov2 plan`'s memory
    model picks the largest divisor of the rank's share that fits, and its expected peak is reported."""
    from openvision2.plan import USABLE
    from openvision2.plan.memory import measure

    config = tiny_config(batch_size=64)
    accumulating = measure(config, 1, accumulate=True, at=(16, 20))
    memory_gib = accumulating.peak(20) / USABLE / 2**30  # room for 20 images per forward, not 32
    split = split_batch(config, 1, memory_gib)
    assert (split.micro_batch, split.grad_accum) == (16, 4)  # 16 divides 64; 20 does not
    assert split.peak_bytes == accumulating.peak(16) <= USABLE * memory_gib * 2**30
    assert f"micro-batch 16 x accumulation 4 per rank, expected peak {split.peak_bytes / 2**30:.1f} GiB" in \
        split.describe()
