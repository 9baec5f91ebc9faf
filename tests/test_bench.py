"""`ov2 bench` at a tiny size: it runs every method in its own process and reports well-formed,
positive figures. Timings are not asserted (benchmarks are commands, not timed tests)."""

import contextlib
import io
import json
import time

import pytest
import torch

from openvision2.bench import rounds, runner
from openvision2.bench.gpu_suite import INJECT_OOM, timing_batch
from openvision2.bench.gpu_summary import summarize
from openvision2.bench.methods import METHODS, BenchShape, StepLoss, build_model, make_batch
from openvision2.bench.runner import OutOfTime, PeakProbe, WorkerProcess, find_max_batch
from openvision2.bench.worker import Worker
from openvision2.bench.sweep import parse_sweep
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
    # --rounds 0: the largest batch alone, as a table too (no timing figures to print)
    assert main(["bench", *TINY, "--methods", "cappa", "--rounds", "0", "--max-batch", "--mem-budget", "1",
                 "--max-batch-limit", "1"]) == 0
    assert "largest batch under 1.00 GiB: cappa 1+" in capsys.readouterr().out


def test_max_batch_trials_reuse_one_worker_and_an_allocation_failure_is_a_miss():
    spec = {"device": "cpu", "precision": "fp32", "warmup": 1, "threads": 1, "method": "openvision2",
            "shape": BenchShape(encoder="mu/8", decoder="mu", image_size=32, vocab_size=64, text_len=12).to_dict()}
    # at most 256 MiB more than at start-up: a 30000-image batch fails to allocate, which is a miss, not an
    # error, and the same worker goes on; the peak mark is reset per trial, so a smaller batch is measured too
    probe = PeakProbe({**spec, "mem_limit_bytes": 256 * 2**20})
    try:
        assert probe(4) > 0 and probe(30000) is None and probe(1) > 0 and probe.worker is not None
        # the cache is released after the warm-up, then before and after each trial (the failed one too)
        assert probe.worker.ask({"cmd": "report", "flops": False})["cache_releases"] == 1 + 2 * 3
    finally:
        probe.close()


def test_bench_ranks_measures_the_fsdp2_step_on_every_gloo_rank():
    """--ranks 2: the model wrapped with FSDP2 over 2 gloo ranks (a process each); rank 0 hands every
    command to the other and a trial's peak is the larger rank's; the two ranks end with the worker."""
    from openvision2.bench.runner import WorkerProcess

    spec = {**TINY_SPEC, "threads": 1, "ranks": 2, "activation_checkpointing": "full"}
    worker = WorkerProcess({**spec, "live_cpu_peak": True})
    try:
        answer = worker.ask({"cmd": "peak", "batch": 3})
        assert len(answer["rank_peaks"]) == 2 and all(p > 0 for p in answer["rank_peaks"])
        assert answer["peak_mem_bytes"] == max(answer["rank_peaks"])
        assert len(worker.ask({"cmd": "steps", "n": 2})["times"]) == 2
        assert worker.ask({"cmd": "report", "flops": False})["params"] > 0
    finally:
        worker.close()
    assert worker.process.returncode == 0 and [p.returncode for p in worker.others] == [0]


def test_bench_ranks_refuses_what_it_cannot_wrap(capsys):
    assert main(["bench", *TINY, "--ranks", "2", "--methods", "coca"]) == 2
    assert "--ranks 2" in capsys.readouterr().err
    assert main(["bench", *TINY, "--ranks", "0"]) == 2


TINY_SPEC = {"device": "cpu", "precision": "fp32", "warmup": 1, "threads": 0, "method": "openvision2",
             "shape": BenchShape(encoder="mu/8", decoder="mu", image_size=32, vocab_size=64, text_len=12).to_dict()}


def test_worker_releases_the_cache_after_warm_up_and_around_trials_never_between_timed_steps():
    released = []
    worker = Worker(TINY_SPEC, release_cache=lambda: released.append(1))

    def steps_taken():  # AdamW's step count: every training step the worker ran
        return int(next(iter(worker.optimizer.state.values()))["step"])

    assert (len(released), steps_taken()) == (1, 1)  # after the warm-up
    assert len(worker.timed_steps(3)) == 3 and steps_taken() == 5  # one untimed step rebuilds the working set
    assert len(worker.timed_steps(2)) == 2 and steps_taken() == 7  # warm: no untimed step, no release
    assert len(released) == 1
    assert worker.peak(2) > 0 and len(released) == 3  # a clean cache before the trial, none left after
    assert len(worker.timed_steps(1)) == 1 and steps_taken() == 10 and len(released) == 3


def test_a_worker_past_its_deadline_is_stopped_and_a_search_keeps_what_it_found():
    start = time.monotonic()
    with pytest.raises(OutOfTime):
        WorkerProcess(TINY_SPEC, deadline=time.monotonic() + 0.5)  # importing torch alone takes longer
    assert time.monotonic() - start < 30

    def measure(batch):  # the worker is stopped during the third trial
        if batch > 2:
            raise OutOfTime("openvision2")
        return batch * 2**20

    found = find_max_batch(measure, 2**30, 4096)
    assert (found["max_batch"], found["stopped_early"]) == (2, True)
    with pytest.raises(UserError, match="time budget ended before batch 1"):
        find_max_batch(lambda b: measure(3), 2**30, 4096)
    short = find_max_batch(lambda b: b * 2**20, 2**30, 4096, seconds=0)  # out of time after batches 1 and 2
    assert (short["max_batch"], short["stopped_early"], len(short["trials"])) == (2, True, 2)


def test_the_timing_batch_follows_the_gpus_memory():
    # OpenVision 1 @224 needs 6.2 GiB + 0.41 GiB per image (ov2 plan's tracker) within 88% of the GPU:
    # a power of two up to 256 (H200, H100-80GB, A100-40GB, a 24 GB card, an 8 GB card)
    assert [timing_batch(gib * 2**30) for gib in (139.7, 79.1, 39.4, 23.6, 8)] == [256, 128, 64, 32, 2]


def test_max_batch_fresh_starts_a_worker_per_trial_and_reads_what_a_fresh_process_reads():
    spec = {"device": "cpu", "precision": "fp32", "warmup": 1, "threads": 1, "method": "openvision2",
            "shape": BenchShape(encoder="mu/8", decoder="mu", image_size=32, vocab_size=64, text_len=12).to_dict()}
    fresh = PeakProbe(spec, fresh=True)
    first = fresh(8)
    assert first > 0 and fresh.worker is None  # nothing is carried into the next trial
    second = fresh(8)
    assert fresh.worker is None and abs(second - first) <= 0.1 * first  # the same reading each time


def test_find_max_batch_bisects_to_the_largest_fitting_batch():
    def linear(batch):  # 100 MB plus 30 MB per image
        return (100 + 30 * batch) * 2**20

    found = find_max_batch(linear, 1000 * 2**20, 4096)
    assert found["max_batch"] == 30 and not found["at_limit"]
    assert len(found["trials"]) <= 5  # 1, 2, the linear prediction and its neighbour
    coarse = find_max_batch(lambda b: b * 2**20, 1000 * 2**20, 4096, tolerance=0.05)
    assert 950 <= coarse["max_batch"] <= 1000 and coarse["miss_above"] <= 1.05 * coarse["max_batch"] + 1
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
    for bad in ("res", "depth=1,2", "res=a,b", "keep_ratio=0,0.5", "batch=0"):
        with pytest.raises(UserError):
            parse_sweep(bad)
    assert parse_sweep("keep-ratio=0.25,1") == ("keep_ratio", [0.25, 1.0])
    assert main(["bench", "--dry-run"]) != 0 and "--suite gpu" in capsys.readouterr().err


def test_sweep_writes_json_and_png_per_axis_value(tmp_path, capsys):
    rounds = TINY.index("--rounds")
    args = TINY[:rounds] + TINY[rounds + 2:] + ["--rounds", "1", "--methods", "openvision2"]
    assert main(["bench", *args, "--sweep", "precision=fp32,bf16", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "sweep-precision.json").read_text())
    assert [p["precision"] for p in out["points"]] == ["fp32", "bf16"]
    for point in out["points"]:
        assert set(point["methods"]) == {"openvision2"} and point["methods"]["openvision2"]["mfu"] > 0
    assert (tmp_path / "sweep-precision.png").read_bytes()[:4] == b"\x89PNG"
    assert "bf16 openvision2" in capsys.readouterr().out


class CountingWorker(WorkerProcess):
    """A real worker that also counts how many are alive at once."""

    started: list = []
    most = 0

    def __init__(self, *args, **kwargs):
        alive = sum(worker.process.poll() is None for worker in CountingWorker.started)
        CountingWorker.most = max(CountingWorker.most, alive + 1)
        super().__init__(*args, **kwargs)
        CountingWorker.started.append(self)


@pytest.fixture(scope="module")
def oom_dry_run(tmp_path_factory):
    """The GPU check's dry run with an out-of-memory in its last section (OpenVision 1's search with
    activation checkpointing): seconds on an idle machine. Returns (exit status, json, summary, stdout)."""
    out = tmp_path_factory.mktemp("gpu-check")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(INJECT_OOM, "max_batch_ac:openvision1")
        patch.setattr(rounds, "WorkerProcess", CountingWorker)
        patch.setattr(runner, "WorkerProcess", CountingWorker)
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(["bench", "--suite", "gpu", "--dry-run", "--out", str(out), "--peak-tflops", "1"])
    return code, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.txt").read_text(), stdout.getvalue()


def test_gpu_suite_dry_run_keeps_every_finished_result_when_the_last_section_runs_out_of_memory(oom_dry_run):
    code, result, text, stdout = oom_dry_run
    sections = result["sections"]
    assert code == 1 and result["finished"] and not result["ok"] and result["dry_run"]
    assert list(sections) == ["train", "fsdp", "bench", "max_batch", "compile", "max_batch_ac"]
    # the out-of-memory is that one entry's result ...
    failed = sections["max_batch_ac"]["32"]["openvision1"]
    assert failed["oom"] and "out of memory" in failed["error"]
    # ... and everything finished before it (the same section's other search included) is kept
    assert sections["max_batch_ac"]["32"]["openvision2"]["max_batch"] == 3
    point = sections["bench"]["32"]
    assert set(point["methods"]) == {"openvision2", "openvision1"} and point["methods"]["openvision1"]["mfu"] > 0
    assert all(sections["max_batch"]["32"][m]["max_batch"] == 3 and sections["max_batch"]["32"][m]["at_limit"]
               for m in ("openvision2", "openvision1"))
    assert sections["compile"]["speedup"] > 0 and sections["compile"]["compiled"]["mfu"] > 0
    assert sections["fsdp"]["backend"] == "gloo" and sections["train"]["loss_fell"]
    assert len(sections["train"]["losses"]) >= 2
    assert all(s["seconds"] <= s["budget_s"] for s in sections.values())
    # the summary shows all of it, the failure in its place
    assert text == stdout and "DRY RUN" in text and "FAILED" in text
    assert "openvision1  step" in text and "max batch 3+ / with AC OUT OF MEMORY" in text
    assert "max batch OV2/OV1: 1.00x without AC (paper: 4x)" in text
    assert "torch.compile (eager) OV2 @32 batch 2" in text and "FSDP2 1 rank (gloo): loss" in text
    # no two workers were ever alive at once (the compile section's eager and compiled ones included)
    assert CountingWorker.most == 1 and all(w.process.poll() is not None for w in CountingWorker.started)


def test_gpu_summary_shows_a_search_stopped_early_and_a_check_not_finished(oom_dry_run):
    _, result, _, _ = oom_dry_run
    found = find_max_batch(lambda b: b * 2**20, 2**30, 4096, seconds=0)  # out of time after batches 1 and 2
    result["sections"]["max_batch"]["32"]["openvision1"] = {k: found[k] for k in ("max_batch", "at_limit",
                                                                                   "stopped_early", "miss_above")}
    result["finished"] = False
    text = summarize(result)
    assert "openvision1" in text and "max batch >=2 / with AC OUT OF MEMORY" in text
    assert "1.50x without AC (a search stopped early: not a measured ratio)" in text
    assert "stopped early" in text.splitlines()[-1] and "INCOMPLETE" in text.splitlines()[0]


def test_gpu_suite_refuses_a_bad_oom_test_hook(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(INJECT_OOM, "nowhere")
    assert main(["bench", "--suite", "gpu", "--dry-run", "--out", str(tmp_path)]) == 2
    assert INJECT_OOM in capsys.readouterr().err and not (tmp_path / "gpu_check.json").exists()


def test_a_worker_interrupted_by_ctrl_c_leaves_no_traceback():
    """Ctrl-C reaches every process of the group: a worker ends quietly (exit 130) and the parent's
    one line ("ov2 bench: interrupted") is all the user sees."""
    import signal
    import subprocess
    import sys

    worker = subprocess.Popen([sys.executable, "-m", "openvision2.bench.worker", json.dumps(TINY_SPEC)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert json.loads(worker.stdout.readline()) == {"ready": True}
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 130 and "Traceback" not in err
