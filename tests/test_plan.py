"""ov2 plan: the fake run equals the real one, its torch workarounds, the micro-batch search, the command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from openvision2 import hardware
from openvision2.cli import main
from openvision2.errors import UserError
from openvision2.plan import fit_micro_batch
from openvision2.plan.fake import cuda_autocast_policy, needs_propagation_fix, tracked_steps
from openvision2.plan.memory import USABLE, measure
from openvision2.train.config import TrainConfig

TINY = ["encoder=mu/8", "decoder=mu", "image_size=16", "text_len=8", "alt_text_len=6", "bpe_vocab_size=64",
        "batch_size=16", "precision=bf16"]


def tiny(method: str = "openvision2", **changes) -> TrainConfig:
    config = TrainConfig(encoder="mu/8", decoder="mu", image_size=16, text_len=8, alt_text_len=6, tokenizer="bpe",
                         bpe_vocab_size=64, batch_size=16, precision="bf16", method=method)
    return config.replace(**changes)


@pytest.mark.parametrize("method,parallel,world,checkpointing", [
    ("openvision2", "none", 1, "none"), ("openvision2", "none", 1, "selective"),
    ("openvision1", "fsdp", 2, "full"), ("openvision2", "fsdp", 2, "none")])
def test_the_fake_run_tracks_what_the_real_step_holds(method, parallel, world, checkpointing):
    """The same step (model, loss, wrapping, bf16 autocast, AdamW) on fake and on real tensors: the tracked
    peaks agree within 2% (FSDP2 over torch's fake process group, where collectives do nothing)."""
    config = tiny(method, parallel=parallel)
    fake, = tracked_steps(config, world, (8,), checkpointing)
    real, = tracked_steps(config, world, (8,), checkpointing, fake=False)
    assert fake.total == pytest.approx(real.total, rel=0.02)
    assert fake.optimizer == real.optimizer > 0


def test_accumulation_holds_the_gradients_of_the_first_micro_batch():
    config = tiny(parallel="none")
    single, = tracked_steps(config, 1, (8,), "none")
    fake, = tracked_steps(config, 1, (8,), "none", accumulate=True)
    real, = tracked_steps(config, 1, (8,), "none", accumulate=True, fake=False)
    assert fake.total == pytest.approx(real.total, rel=0.02)
    assert fake.gradients > 0 and fake.total > single.total


def first_step_peak(fake: bool, fix: bool) -> dict:
    """The peak by category as FSDPMemTracker counts it when AdamW's state is created inside the tracked steps
    (the sketch's two-step form), on an FSDP2 stack over the fake process group, world size 4."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from openvision2.plan.fake import dtensor_propagation_fix, fake_process_group

    propagator = DTensor._op_dispatcher.sharding_propagator  # a cold cache, as in a fresh process
    propagator.propagate_op_sharding.cache_clear()
    propagator._propagate_tensor_meta_cached.cache_clear()
    with fake_process_group(4), dtensor_propagation_fix() if fix else contextlib.nullcontext():
        with torch.device("meta"):
            model = torch.nn.Sequential(*(torch.nn.Linear(64, 64) for _ in range(3)))
        for layer in model:
            fully_shard(layer)
        fully_shard(model)
        with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
            model.to_empty(device="cpu")
            optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
            x = torch.randn(8, 64)
            tracker = FSDPMemTracker(mod=model, optm=optimizer)
            with tracker:
                for step in range(2):  # the first creates AdamW's state
                    model(x).sum().backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    if step == 0:
                        tracker.reset_mod_stats()
            snapshot = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
            return {getattr(k, "value", k): v for k, v in snapshot.items()}


def test_the_dtensor_propagation_fix_is_guarded_by_version_and_undone():
    import torch.distributed.tensor._sharding_prop as propagation

    from openvision2.plan.fake import dtensor_propagation_fix

    assert needs_propagation_fix("2.14.1+cu130") and needs_propagation_fix("2.14.0")
    assert not needs_propagation_fix("2.15.0") and not needs_propagation_fix("2.13.1")
    original = propagation.detect_fake_mode
    with dtensor_propagation_fix("2.15.0"):
        assert propagation.detect_fake_mode is original
    with dtensor_propagation_fix("2.14.1"):
        assert propagation.detect_fake_mode is not original and propagation.detect_fake_mode() is None
    assert propagation.detect_fake_mode is original
    # under the fix, the sketch's form (AdamW's state created inside the tracked steps) counts what real tensors hold
    expected = first_step_peak(fake=False, fix=False)
    assert first_step_peak(fake=True, fix=True) == expected and expected["OptState"] > 0


def test_planning_follows_cuda_autocast_for_norms_and_softmax():
    """CPU autocast leaves layer_norm / softmax / log_softmax of a bf16 tensor (a matmul's output) in bf16;
    CUDA's runs them in fp32."""
    x = torch.randn(2, 8, dtype=torch.bfloat16)

    def dtypes():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return (F.layer_norm(x, (8,)).dtype, F.softmax(x, -1).dtype, F.log_softmax(x, -1).dtype,
                    F.linear(x.float(), torch.randn(4, 8)).dtype)

    assert dtypes() == (torch.bfloat16,) * 4
    with cuda_autocast_policy():
        assert dtypes() == (torch.float32, torch.float32, torch.float32, torch.bfloat16)
    assert dtypes() == (torch.bfloat16,) * 4  # the CPU policy is back


def test_fit_micro_batch_returns_the_largest_divisor_that_fits():
    config = tiny(parallel="none", batch_size=64)
    fit = measure(config, 2, at=(32,))
    roomy = (fit.peak(32) + 2 ** 20) / USABLE / 2 ** 30
    assert fit_micro_batch(config, 2, roomy) == (32, fit.peak(32))  # the whole per-device batch, as measured
    accumulating = measure(config, 2, accumulate=True, at=(8, 10))
    tight = (accumulating.peak(10) + 1) / USABLE / 2 ** 30
    micro, peak = fit_micro_batch(config, 2, tight)
    assert micro == 8 and peak == accumulating.peak(8) <= USABLE * tight * 2 ** 30  # 10 fits, 16 not; 8 divides 32
    with pytest.raises(UserError, match="does not fit .* at micro-batch 1.*activation_checkpointing=full"):
        fit_micro_batch(config, 2, 1e-4)
    with pytest.raises(UserError, match="cannot be split over 3 GPUs"):
        fit_micro_batch(config, 3, 80)


def test_the_gpu_table_holds_the_data_sheet_figures():
    table = hardware.ACCELERATORS
    assert (table["H100-80GB"].memory_gib, table["H100-80GB"].bf16_tflops, table["H100-80GB"].tf32_tflops) == (79.1, 989.0, 494.7)
    assert (table["H100-NVL"].memory_gib, table["H100-NVL"].bf16_tflops) == (93.1, 835.5)  # not the PCIe card's 756
    assert table["H100-PCIe"].bf16_tflops == 756.0 and table["H200"].memory_gib == 139.8
    assert (table["A100-40GB"].memory_gib, table["A100-80GB"].memory_gib, table["A100-80GB"].bf16_tflops) == (39.4, 79.2, 312.0)
    assert (table["B200"].bf16_tflops, table["MI300X"].bf16_tflops, table["L4"].bf16_tflops) == (2250.0, 1307.4, 121.0)
    assert (table["TPU-v4"].memory_gib, table["TPU-v4"].bf16_tflops, table["TPU-v4"].tf32_tflops) == (32.0, 275.0, None)
    assert {"H800", "H200"} <= set(table)
    assert hardware.accelerator("h100 nvl") is table["H100-NVL"]
    assert hardware.KNOWN_PEAKS_TFLOPS["bf16"]["L40S"] == 362.0  # matched before the L4's fragment


def run_plan(capsys, *argv) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_careless_input_gets_one_line(capsys):
    code, _, err = run_plan(capsys, "--preset", "tiny-cpu", "--gpu", "H1000")
    assert code == 2 and "unknown GPU kind 'H1000'" in err and "H100-80GB" in err and len(err.splitlines()) == 1
    code, _, err = run_plan(capsys, "--preset", "tiny-cpu", "--gpus", "3", *TINY)
    assert code == 2 and "batch_size 16 cannot be split over 3 GPUs" in err and len(err.splitlines()) == 1
    code, _, err = run_plan(capsys, "--encoder", "L/14", "--preset", "tiny-cpu")
    assert code == 2 and "one of --preset" in err


def test_a_config_that_fits_nowhere_says_what_would(capsys):
    code, _, err = run_plan(capsys, "--preset", "tiny-cpu", "--gpus", "2", "--device-memory", "0.0001", *TINY)
    assert code == 2 and len(err.splitlines()) == 1
    assert "does not fit 0.0001 GiB per GPU even at micro-batch 1 with any activation checkpointing" in err
    assert "parallel=fsdp" in err and "activation_checkpointing" not in err.split("try")[1]


def test_json_fields(capsys):
    code, out, _ = run_plan(capsys, "--preset", "tiny-cpu", "--gpus", "2", "--gpu", "L4", "--mfu", "0.5",
                            "--price-per-gpu-hour", "2", "--explain", "--json", *TINY)
    assert code == 0
    plan = json.loads(out)["stages"][0]
    assert plan["gpu"] == "L4" and plan["device_memory_gib"] == 22.0 and plan["fits"]
    assert plan["micro_batch"] * plan["grad_accum"] == plan["per_device_batch"] == 8
    parts = plan["breakdown_gib"]
    assert set(parts) >= {"parameters", "gradients", "optimizer", "activations", "loss_temporaries", "allowance"}
    assert parts["allowance"] == pytest.approx(0.12 * 22.0)
    assert sum(parts.values()) - parts["allowance"] == pytest.approx(plan["peak_gib"], rel=1e-6)
    assert set(plan["largest_micro_batch"]) == {"none", "full", "selective"}
    t = plan["time"]
    assert t["mfu"] == 0.5 and t["peak_tflops"] == 121.0
    assert t["step_s"] == pytest.approx(8 * t["gflops_per_sample"] * 1e9 / (121e12 * 0.5))
    assert t["cost"] == pytest.approx(2 * t["gpu_hours"]) and t["gpu_hours"] == pytest.approx(2 * t["days"] * 24)
    assert plan["explain"]["activation_mib_per_sample"]["analytic"] > 0


def test_the_command_imports_nothing_heavy():
    code = "import sys, openvision2.commands.plan, openvision2.hardware; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_search_measures_the_largest_micro_batch_of_a_curved_memory_curve():
    """The step's memory bends upwards with the micro-batch (plan/memory.py), so a line through 8 and 16
    would be wrong far away: the search measures around the capacity instead, and what it says fits does."""
    from openvision2.plan.memory import MemoryFit, _search

    def total(b):  # 63 MiB a sample up to a full loss chunk (33 captions), then 47 rising slowly (L/14 @84's shape)
        return 2 ** 30 + (47 * b + 16 * min(b, 33) + b * b / 1000) * 2 ** 20

    measured = {}

    def probe(b):
        measured.setdefault(b, {"total": total(b)})

    def fit():
        return MemoryFit(tuple(sorted(measured.items())), "none", "fsdp", 8, False)

    probe(8), probe(16)
    line = MemoryFit(tuple(sorted(measured.items())), "none", "fsdp", 8, False)
    capacity = 0.88 * 79.1 * 2 ** 30
    truth = max(b for b in range(1, 5000) if total(b) <= capacity)
    assert line.largest(capacity) < 0.85 * truth  # extrapolated from 8 and 16: far too small
    _search(probe, fit, capacity)
    found = fit().largest(capacity)
    assert truth * 0.99 <= found <= truth and total(found) <= capacity
    assert len(measured) <= 2 + 6  # a few fake steps, not a sweep
    assert fit().largest(0.5 * 2 ** 30) == 0


def test_a_chosen_micro_batch_that_interpolation_overpromised_is_measured_and_stepped_down(monkeypatch):
    """What a run would choose is measured; if the estimate promised too much (a curve that bends up,
    searched with no probes here), the next smaller divisor is measured and chosen instead."""
    import contextlib

    from openvision2.plan import fake, memory
    from openvision2.plan.fake import Tracked

    def total(b):  # MiB: 10 a sample at first, 30 a sample by 64
        return int((1024 + 10 * b + b * b / 6.4) * 2 ** 20)

    @contextlib.contextmanager
    def curve(*args, **kwargs):
        yield lambda b: Tracked(0, 0, 0, total(b), 0, total(b))

    monkeypatch.setattr(fake, "fake_steps", curve)
    monkeypatch.setattr(memory, "SEARCH_PROBES", 0)
    capacity = total(50) + 1  # the truth: 50 fit
    fit = memory.measure_here(tiny(parallel="none"), 1, "none", True, (capacity,), (), 128)
    assert fit.measured(64) > capacity  # the line through 8 and 16 promised 66: 64 was tried
    assert fit.measured(32) <= capacity and fit.largest(capacity) < 64
    assert memory.micro_batch_for(128, min(fit.largest(capacity), 64)) == 32


@pytest.mark.parametrize("parallel,gpus", [("none", 2), ("fsdp", 2)])
def test_the_release_first_moment_saving_known_before_measuring_is_the_tracked_one(parallel, gpus):
    """--release-settings searches the capacity plus what Adam's bf16 first moment saves (2 bytes a
    parameter on the device), known before any fake step; it is a quarter of the tracked AdamW state."""
    from openvision2.plan.stage import _first_moment_saving

    config = tiny(parallel=parallel)
    tracked = measure(config, gpus, at=(8,)).parts(8)["optimizer"] / 4
    assert _first_moment_saving(config, gpus) == pytest.approx(tracked, rel=0.02)
