"""`ov2 bench` at a tiny size: it runs every method in its own process and reports well-formed,
positive figures. Timings are not asserted (benchmarks are commands, not timed tests)."""

import json

import pytest
import torch

from openvision2.bench.methods import METHODS, BenchShape, StepLoss, build_model, make_batch
from openvision2.bench.runner import find_max_batch
from openvision2.cli import main
from openvision2.errors import UserError
from openvision2.precision import auto_precision

TINY = ["--model", "mu/8", "--res", "32", "--decoder", "mu", "--vocab", "64", "--text-len", "12",
        "--alt-text-len", "8", "--batch", "2", "--rounds", "2", "--warmup", "1", "--threads", "1",
        "--peak-tflops", "1.0"]


def test_bench_json_has_every_method_with_positive_figures(capsys):
    assert main(["bench", *TINY, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["methods"]) == set(METHODS)
    for method, r in out["methods"].items():
        assert r["step_s"] > 0 and len(r["step_s_all"]) == 2, method
        assert r["peak_mem_bytes"] > 0 and r["params"] > 0 and r["gflops_per_image"] > 0
        assert r["images_per_s"] > 0 and 0 < r["mfu"]
    for method in ("openvision2", "openvision1", "cappa"):  # counted == analytic (`ov2 flops`, both OV1 texts)
        r = out["methods"][method]
        assert r["gflops_per_image"] == pytest.approx(r["gflops_per_image_analytic"], rel=0.01)
    ratios = out["ratios_vs_openvision2"]
    assert ratios["openvision2"] == {"time": 1.0, "memory": 1.0, "flops": 1.0}
    assert ratios["openvision1"]["flops"] > 1 and ratios["cappa"]["flops"] > 1
    assert out["peak_tflops"] == 1.0 and out["shape"]["batch_size"] == 2
    # precision: resolved as `ov2 train` resolves it, and reported with what was asked
    asked = out["precision_asked"]
    assert out["precision"] == (auto_precision(torch.device("cpu")) if asked == "auto" else asked)


def test_bench_max_batch_and_table(capsys):
    # limit 1: one timed worker and one max-batch trial, each a fresh process (seconds each on a busy machine)
    assert main(["bench", *TINY, "--methods", "cappa", "--rounds", "1", "--max-batch", "--mem-budget", "1",
                 "--max-batch-limit", "1"]) == 0
    text = capsys.readouterr().out
    assert "cappa" in text and "largest batch under 1.00 GiB: cappa 1+" in text


def test_find_max_batch_bisects_to_the_largest_fitting_batch():
    def linear(batch):  # 100 MB plus 30 MB per image
        return (100 + 30 * batch) * 2**20

    found = find_max_batch(linear, 1000 * 2**20, 4096)
    assert found["max_batch"] == 30 and not found["at_limit"]
    assert len(found["trials"]) <= 5  # 1, 2, the linear prediction and its neighbour
    oom = find_max_batch(lambda b: None if b > 20 else b, 10**9, 64)
    assert oom["max_batch"] == 20
    assert find_max_batch(lambda b: 1, 10**9, 16)["at_limit"]
    with pytest.raises(UserError):
        find_max_batch(lambda b: 10**10, 10**9, 16)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_the_shared_batch(method):
    shape = BenchShape(encoder="mu/8", decoder="mu", image_size=32, vocab_size=64, text_len=12, alt_text_len=8)
    model = build_model(method, shape)
    loss = StepLoss(method)(model, make_batch(method, shape, 2))
    loss.backward()
    assert loss.isfinite() and all(p.grad is None or p.grad.isfinite().all() for p in model.parameters())


def test_bench_rejects_bad_input(capsys):
    assert main(["bench", "--methods", "clip"]) != 0
    assert "unknown bench method" in capsys.readouterr().err
    assert main(["bench", "--model", "Z/9"]) != 0
    assert "unknown encoder" in capsys.readouterr().err
