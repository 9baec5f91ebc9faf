"""`ov2 compare` (issue 12 §2): two methods for a few steps on one shared setting, compare.json, the HTML
page rendered in headless Chromium, reuse of finished runs, and the fairness refusals."""

import json
import re

import pytest

from browser import needs_chromium, rendered_dom
from openvision2.cli import main
from openvision2.compare.methods import method_config
from openvision2.compare.run import budget_steps

TINY = ["encoder=mu/8", "decoder=mu", "image_size=32", "batch_size=4", "val_samples=4", "train_samples=200",
        "eval_images=4", "evals=", "tensorboard=false", "log_every=1"]
SMALL_EVALS = ["--rounds", "1", "--probe-train-images", "40", "--test-images", "20", "--attentive-epochs", "2",
               "--vlm-train-images", "16", "--vlm-test-images", "8", "--vlm-stage1-steps", "2",
               "--vlm-stage2-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    argv = ["compare", "--methods", "openvision2,openvision1", "--steps", "3", "--out", str(out), *SMALL_EVALS, *TINY]
    assert main(argv) == 0
    return out


def test_compare_writes_json_with_costs_evals_and_differences(compared):
    result = json.loads((compared / "compare.json").read_text())
    assert list(result["methods"]) == ["openvision2", "openvision1"] and result["budget"] == "steps"
    for method, r in result["methods"].items():
        assert r["steps"] == 3 and r["step_s"] > 0 and r["peak_mem_bytes"] > 0 and r["train_flops"] > 0
        assert [s for s, _ in r["loss"]["train"]] == [1, 2, 3]
        assert {"probe/linear_pooled", "probe/attentive", "probe/knn", "vlm/overall", "vlm/existence"} <= r["evals"].keys()
    # caption likelihood for OV2, CLIP's protocol through the text tower for OV1
    assert all("zeroshot/top1" in r["evals"] for r in result["methods"].values())
    assert result["differences"]["method"] == {"openvision2": "openvision2", "openvision1": "openvision1"}
    assert "seed" not in result["differences"] and "encoder" not in result["differences"]
    assert result["ratios_vs_reference"]["openvision2"] == {"time_per_step": 1.0, "memory": 1.0, "flops_per_image": 1.0}
    # eval vlm's thorough preset (compare's default) with the sizes the command gave
    protocol = result["vlm_protocol"]
    assert (protocol["tokens"], protocol["stage2_lr"], protocol["train_images"], protocol["stage2_steps"]) == \
        ("pooled", 3e-4, 16, 2)


def test_compare_vlm_preset_fills_what_the_command_leaves_out():
    from openvision2.compare.options import CompareOptions

    thorough = CompareOptions(methods=[], vlm_stage2_steps=100).vlm_options()
    assert (thorough.tokens, thorough.stage1_train_lm, thorough.stage2_lr, thorough.train_images) == \
        ("pooled", True, 3e-4, 10000)
    assert thorough.stage2_steps == 100
    quick = CompareOptions(methods=[], vlm_preset="quick").vlm_options()
    assert (quick.tokens, quick.stage1_train_lm, quick.stage2_lr, quick.train_images, quick.stage2_steps) == \
        ("patch", False, 1e-3, 2000, 600)


def test_compare_reuses_finished_runs(compared, capsys):
    argv = ["compare", "--methods", "openvision2,openvision1", "--steps", "3", "--out", str(compared), "--json",
            *SMALL_EVALS, *TINY]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert all(r["reused_run"] for r in result["methods"].values())


def test_compare_refuses_other_settings_in_the_same_out(compared, capsys):
    argv = ["compare", "--methods", "openvision2", "--steps", "3", "--out", str(compared), *SMALL_EVALS, *TINY,
            "seed=1"]
    assert main(argv) == 2
    assert "holds a run with other settings (run.seed=0 there, 1 now)" in capsys.readouterr().err


def test_budgets_give_each_method_the_reference_cost():
    costs = {"methods": {"openvision2": {"step_s": 1.0, "forward_flops_per_image": 2e9},
                         "openvision1": {"step_s": 2.0, "forward_flops_per_image": 4e9},
                         "cappa": {"step_s": 1.25, "forward_flops_per_image": 3e9}}}
    methods = ["openvision2", "openvision1", "cappa"]
    assert budget_steps(costs, methods, 100, "steps") == {"openvision2": 100, "openvision1": 100, "cappa": 100}
    assert budget_steps(costs, methods, 100, "wall") == {"openvision2": 100, "openvision1": 50, "cappa": 80}
    assert budget_steps(costs, methods, 100, "flops") == {"openvision2": 100, "openvision1": 50, "cappa": 67}


def test_openvision1_needs_a_distinct_alt_text_on_shards():
    from openvision2.errors import UserError

    with pytest.raises(UserError, match="alt-text distinct from the caption"):
        method_config("tiny-cpu", "openvision1", ["dataset=shards", "train_shards=x.tar"])
    config = method_config("tiny-cpu", "openvision1", ["dataset=shards", "train_shards=x.tar",
                                                       "alt_caption_key=org_caption"])
    assert config.method == "openvision1" and config.alt_caption_key == "org_caption"


@needs_chromium
def test_compare_page_renders_in_headless_chromium(compared, tmp_path):
    page = compared / "index.html"
    expected = len(re.findall(r"<img ", page.read_text()))
    assert expected == 4
    dom = rendered_dom(page, tmp_path / "profile")
    assert f'data-images-loaded="{expected}/{expected}"' in dom, dom[-2000:]
    assert "openvision1" in dom and "What differs between the runs" in dom
    assert "ov2 eval vlm --preset thorough" in dom and "16 training images" in dom


def test_compare_refuses_a_bad_evaluation_size_before_training(tmp_path, capsys):
    assert main(["compare", "--methods", "openvision2", "--steps", "3", "--out", str(tmp_path / "cmp"),
                 "--vlm-train-images", "0", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--vlm-train-images must be >= 1, got 0" in err
    assert not (tmp_path / "cmp").exists()


def test_compare_out_must_be_a_writable_directory(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    for out, why in ((tmp_path / "a_file", "is a file"), (tmp_path / "a_file" / "sub", "Not a directory")):
        assert main(["compare", "--methods", "openvision2", "--steps", "3", "--out", str(out), *TINY]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and why in err, err


def test_a_second_compare_into_the_same_out_is_refused_at_once(tmp_path, capsys):
    from openvision2.train.rundir import locked

    with locked(tmp_path / "cmp", "ov2 compare"):  # as a first comparison holds it for its whole life
        assert main(["compare", "--methods", "openvision2", "--steps", "3", "--out", str(tmp_path / "cmp"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is in use by another ov2 compare" in err, err
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == [".lock"]  # nothing measured, trained or written


def test_sigterm_to_the_process_group_stops_the_comparison_and_the_same_command_resumes(tmp_path, capsys):
    """A signal during a method's training: the run saves and the comparison exits 75 without evaluating or
    reporting the partial run; the same command then resumes that run from its checkpoint and finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from openvision2.train.faults import PREEMPTED_EXIT
    from scaleout_helpers import TEST_ENV, losses

    out = tmp_path / "cmp"
    argv = ["compare", "--methods", "openvision2", "--steps", "600", "--out", str(out), "--evals", "probe",
            *SMALL_EVALS, *TINY, "log_every=1"]
    process = subprocess.Popen([sys.executable, "-m", "openvision2.cli", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **TEST_ENV},
                               start_new_session=True)
    run = out / "openvision2-600steps"
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").is_file() and any(s >= 2 for s in losses(run))):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)  # as scancel does
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT == 75, stderr
    assert "Traceback" not in stderr and "openvision2-600steps stopped by a signal" in stderr
    assert not (out / "compare.json").exists() and not (run / "compare_eval.json").exists()
    stopped_at = max(losses(run))
    assert 2 <= stopped_at < 600

    capsys.readouterr()
    assert main(argv) == 0
    assert f"at step {stopped_at}" in capsys.readouterr().out  # resumed, not restarted
    result = json.loads((out / "compare.json").read_text())
    assert result["methods"]["openvision2"]["steps"] == 600 and max(losses(run)) == 600


def test_compare_refuses_more_vlm_images_than_memory_holds_before_measuring(tmp_path, capsys):
    assert main(["compare", "--methods", "openvision2", "--steps", "3", "--out", str(tmp_path / "cmp"),
                 "--vlm-train-images", "100000000", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "over half of this machine's" in err, err
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == [".lock"]  # nothing measured or trained


def test_compare_rounds_below_one_is_one_line(tmp_path, capsys):
    assert main(["compare", "--methods", "openvision2", "--steps", "3", "--out", str(tmp_path / "cmp"),
                 "--rounds", "0", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--rounds must be >= 1, got 0" in err, err
    assert not (tmp_path / "cmp").exists()


def test_compare_measures_and_evaluates_on_the_resolved_device(tmp_path, monkeypatch):
    """The command resolves the device as every command does (a GPU when torch sees one), and the evaluation
    loads the encoder and runs eval vlm there (it ran eval vlm on the CPU whatever the device)."""
    import torch

    import openvision2.checkpoint
    import openvision2.compare.run
    import openvision2.vlm.evaluate
    from openvision2.compare.options import CompareOptions
    from openvision2.compare.run import evaluate

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    def run_compare(options, out):
        seen["options"] = options
        return {"html": "index.html", "methods": {}}

    monkeypatch.setattr(openvision2.compare.run, "run_compare", run_compare)
    assert main(["compare", "--methods", "openvision2", "--steps", "3", "--out", str(tmp_path / "cmp"), *TINY]) == 0
    assert seen["options"].device == "cuda"

    from types import SimpleNamespace

    def load_checkpoint(path, device="cpu"):
        seen["load"] = device
        return SimpleNamespace(config=SimpleNamespace(image_size=32)), None, {}

    def evaluate_encoder(model, meta, train_set, test_set, options, device, progress=None):
        seen["vlm"] = device
        return {"overall": 0.5, "accuracy": {"colour": 0.5}}

    monkeypatch.setattr(openvision2.checkpoint, "load_checkpoint", load_checkpoint)
    monkeypatch.setattr(openvision2.vlm.evaluate, "load_vqa", lambda options, size: (None, None))
    monkeypatch.setattr(openvision2.vlm.evaluate, "evaluate_encoder", evaluate_encoder)
    options = CompareOptions(methods=["openvision2"], evals=["vlm"], probe_train_images=4, test_images=4,
                             device="cuda:1")
    assert evaluate(tmp_path, options) == {"vlm/overall": 0.5, "vlm/colour": 0.5}
    assert seen["load"] == "cuda:1" and seen["vlm"] == torch.device("cuda:1")


def _compare_until(out, argv, line: str):
    """Start `ov2 compare` in its own process group; return it once its output shows `line`."""
    import os
    import subprocess
    import sys
    import time

    from scaleout_helpers import TEST_ENV

    log = out.parent / f"{out.name}.out"
    with open(log, "w") as stdout:
        process = subprocess.Popen([sys.executable, "-m", "openvision2.cli", *argv], stdout=stdout,
                                   stderr=subprocess.PIPE, text=True, env={**os.environ, **TEST_ENV},
                                   start_new_session=True)
    deadline = time.monotonic() + 120
    while line not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, (log.read_text(), process.communicate())
        time.sleep(0.05)
    time.sleep(0.5)  # well inside that part
    return process


def _stopped(process) -> str:
    """SIGTERM to the process group (as scancel does): exit 75 and one line, no traceback."""
    import os
    import signal

    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("ov2 compare:")]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def test_sigterm_while_measuring_costs_is_one_line_and_exit_75(tmp_path):
    out = tmp_path / "cmp"
    process = _compare_until(out, ["compare", "--methods", "openvision2", "--steps", "3", "--out", str(out),
                                   *SMALL_EVALS, "--rounds", "100000", *TINY], "measuring step time")
    assert "stopped by a signal while measuring costs" in _stopped(process)
    assert not (out / "costs.json").exists()  # written whole or not at all: the next command measures again


def test_sigterm_while_evaluating_is_one_line_and_keeps_the_finished_run(tmp_path):
    from openvision2.checkpoint import resolve_checkpoint

    out = tmp_path / "cmp"
    process = _compare_until(out, ["compare", "--methods", "openvision2", "--steps", "2", "--out", str(out),
                                   "--evals", "vlm", *SMALL_EVALS, "--vlm-stage2-steps", "100000", *TINY],
                             "openvision2: evaluating")
    assert "stopped by a signal while evaluating openvision2" in _stopped(process)
    run = out / "openvision2-2steps"
    assert json.loads((resolve_checkpoint(run) / "config.json").read_text())["step"] == 2  # the next command reuses it
    assert (out / "costs.json").is_file() and not (run / "compare_eval.json").exists()
