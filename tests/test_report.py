"""`ov2 report`: the HTML page, its plots and captioned images, rendered in headless Chromium."""

import json
import re
import subprocess

import pytest

from browser import chromium_command, needs_chromium, rendered_dom
from openvision2.checkpoint import mark_latest, save_checkpoint
from openvision2.cli import main
from openvision2.eval.report import build_report, read_metrics
from openvision2.models import OpenVision2
from openvision2.train.config import TrainConfig

NUM_IMAGES = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_tokenizer):
    """A run directory as `ov2 train` leaves it: config.json, metrics.jsonl, checkpoints/latest."""
    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(encoder="mu/8", decoder="mu", image_size=32, text_len=24, tokenizer="bpe", steps=30)
    tokenizer = tiny_tokenizer
    model = OpenVision2(config.model_config(tokenizer.vocab_size, tokenizer.pad_id))
    save_checkpoint(run / "checkpoints" / "step-0000030", model, tokenizer, {"step": 30, "train": config.to_dict()})
    mark_latest(run / "checkpoints", "step-0000030")
    resolved = {"precision": "bf16", "parallel": "none", "threads": 1, "world_size": 1, "tokenizer": "bpe vocab 64"}
    (run / "config.json").write_text(json.dumps({**config.to_dict(), "resolved": resolved}))
    lines = [{"step": 0, "val_loss": 4.2}]
    for step in range(10, 31, 10):
        lines.append({"step": step, "loss": 4.0 - step / 20, "lr": 1e-3 * step / 30, "images_per_s": 100.0 + step})
        lines.append({"step": step, "val_loss": 4.1 - step / 20, "zeroshot/top1": 0.03 * step / 10})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n{\"step\": 40, \"lo")
    return run


@pytest.fixture(scope="module")
def report(run_dir):
    return build_report(run_dir, num_images=NUM_IMAGES, evals="zeroshot,captions", eval_images=8)


def test_report_writes_page_plots_and_images(run_dir, report):
    assert len(read_metrics(run_dir / "metrics.jsonl")) == 7  # the torn last line is skipped
    page = (run_dir / "report" / "index.html").read_text()
    names = sorted(p.rsplit("/", 1)[-1] for p in report["plots"])
    assert names == ["evals.png", "loss.png", "lr.png", "throughput.png"]
    sources = re.findall(r"<img src='([^']+)'", page)
    assert len(sources) == len(names) + NUM_IMAGES
    for source in sources:
        assert (run_dir / "report" / source).stat().st_size > 0
    assert {"zeroshot/top1", "captions/cider"} <= set(report["evaluations"])
    assert page.count("class='pred'") == NUM_IMAGES and "truth: " in page
    assert "<th>resolved precision</th><td>bf16</td>" in page  # what precision=auto became for this run


def test_report_cli_json(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r"), "--images", "2", "--evals", "",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and result["evaluations"] == {} and (tmp_path / "r" / "index.html").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2


@needs_chromium
def test_report_renders_in_headless_chromium(run_dir, report, tmp_path):
    page = run_dir / "report" / "index.html"
    expected = len(re.findall(r"<img ", page.read_text()))
    dom = rendered_dom(page, tmp_path / "profile")
    # the page's script counts <img> elements that finished loading with a real width
    assert f'data-images-loaded="{expected}/{expected}"' in dom, dom[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run(chromium_command(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,1600"),
                   capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # plots and pictures, not a blank page


def test_report_runs_on_the_resolved_device_by_default(tmp_path, monkeypatch, capsys):
    """No --device: a GPU when torch sees one, as every evaluating command decides (it was the CPU always)."""
    import torch

    import openvision2.eval.report

    seen = {}

    def fake_report(run, out, images, evals, device, eval_images, **decoding):
        seen["device"] = device
        return {"html": "report.html", "plots": [], "images": 0, "evaluations": {}}

    monkeypatch.setattr(openvision2.eval.report, "build_report", fake_report)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["report", str(tmp_path)]) == 0
    assert seen["device"] == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["report", str(tmp_path)]) == 0
    assert seen["device"] == "cpu"
