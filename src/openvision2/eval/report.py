"""`ov2 report RUN_DIR`: one self-contained HTML page plus PNG plots of a training run.

It holds: loss / learning-rate / throughput curves (and any periodic evaluation) from
RUN_DIR/metrics.jsonl, the evaluations of the run's latest checkpoint, and a grid of held-out images
with the captions it generates next to their true captions. Images are relative links, so the
directory can be copied or served as it is. A script marks the page once every image has loaded
(body[data-images-loaded="N/N"]), which is what the rendering test checks in headless Chromium.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import fields, replace
from pathlib import Path

import torch
from PIL import Image

from ..checkpoint import load_checkpoint, resolve_checkpoint
from ..errors import UserError
from ..generate import generate
from .config import EvalConfig
from .periodic import HeldOut, captions_for, run_evals

PLOTS = (("loss", "caption loss", ("loss", "val_loss")), ("lr", "learning rate", ("lr",)),
         ("throughput", "images / s", ("images_per_s",)))
LOADED_MARKER = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + images.length);
  document.getElementById("load-status").textContent = ok + " of " + images.length + " images loaded";
});
</script>"""
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
.plots img{width:360px;margin:4px;border:1px solid #eee}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:12px}
.cell{border:1px solid #ddd;padding:6px;font-size:12px}.cell img{width:100%;image-rendering:pixelated}
.pred{font-weight:600}.truth{color:#666}.match{background:#eef8ee}#load-status{color:#888;font-size:12px}"""


def read_metrics(path: Path) -> list[dict]:
    """Records of metrics.jsonl; a torn last line (a run still writing) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict) and "step" in r]


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(records: list[dict], out_dir: Path) -> list[tuple[str, str]]:
    """PNG plots (matplotlib, Agg) of the curves present in the records -> [(file name, title)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eval_keys = sorted({k for r in records for k in r if "/" in k and isinstance(r[k], (int, float))})
    plots = list(PLOTS) + ([("evals", "periodic evaluations", tuple(eval_keys))] if eval_keys else [])
    made = []
    for name, title, keys in plots:
        series = [(key, *_series(records, key)) for key in keys]
        series = [s for s in series if s[1]]
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        for key, steps, values in series:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        ax.set_xlabel("step")
        ax.set_title(title)
        if name == "loss" and all(v > 0 for _, _, vals in series for v in vals):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png")
        plt.close(fig)
        made.append((f"{name}.png", title))
    return made


def _run_config(run_dir: Path, checkpoint_meta: dict) -> tuple[EvalConfig, HeldOut, str]:
    """The run's eval section, held-out data and method, from the checkpoint's saved training config
    or the run's config.json (sectioned, or flat as written before the config had sections)."""
    data = checkpoint_meta.get("train")
    if data is None and (run_dir / "config.json").is_file():
        data = json.loads((run_dir / "config.json").read_text())
    data = data or {}

    def read(section: str, key: str, default, alias: str | None = None):
        nested = data.get(section)
        if isinstance(nested, dict):
            return nested.get(key, default)
        return data.get(alias or key, default)

    known = {f.name: f for f in fields(EvalConfig)}
    config = EvalConfig(**{name: read("eval", name, f.default, f.metadata.get("alias")) for name, f in known.items()})
    held_out = HeldOut(read("data", "dataset", "synthetic"), read("data", "val_shards", ""), read("run", "seed", 0))
    return config, held_out, read("model", "method", checkpoint_meta.get("model", {}).get("method", "openvision2"))


def _resolved(run_dir: Path) -> dict:
    """The `resolved` section of a run's config.json (precision, parallel, threads, ...), or {}."""
    try:
        resolved = json.loads((run_dir / "config.json").read_text()).get("resolved", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return resolved if isinstance(resolved, dict) else {}


def _save_image(image: torch.Tensor, path: Path, min_side: int = 160) -> None:
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    scale = max(1, math.ceil(min_side / picture.width))
    picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).save(path)


def _format(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def render_html(title: str, summary: dict, plots: list[tuple[str, str]], evaluations: dict,
                samples: list[dict]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             "<p id='load-status'>loading images…</p>", "<table>"]
    parts += [f"<tr><th>{html.escape(k)}</th><td>{_format(v)}</td></tr>" for k, v in summary.items()]
    parts.append("</table><h2>Training curves</h2><div class='plots'>")
    parts += [f"<img src='{name}' alt='{html.escape(t)}' title='{html.escape(t)}'>" for name, t in plots]
    if not plots:
        parts.append("<p>no metrics.jsonl records to plot</p>")
    parts.append("</div><h2>Evaluation of the checkpoint</h2>")
    if evaluations:
        parts.append("<table><tr><th>metric</th><th>value</th></tr>")
        parts += [f"<tr><td>{html.escape(k)}</td><td>{_format(v)}</td></tr>" for k, v in evaluations.items()]
        parts.append("</table>")
    else:
        parts.append("<p>no evaluations were run</p>")
    parts.append("<h2>Held-out images and generated captions</h2><div class='grid'>")
    for s in samples:
        match = " match" if s["prediction"].strip() == s["truth"].strip() else ""
        parts.append(f"<div class='cell{match}'><img src='{s['image']}' alt='held-out image'>"
                     f"<div class='pred'>{html.escape(s['prediction'])}</div>"
                     f"<div class='truth'>truth: {html.escape(s['truth'])}</div></div>")
    parts.append(f"</div>{LOADED_MARKER}</body></html>")
    return "\n".join(parts)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, num_images: int = 16,
                 evals: str = "zeroshot,captions,probe", device: str | torch.device = "cpu",
                 eval_images: int = 256, **decoding) -> dict:
    """Write out_dir (default RUN_DIR/report)/index.html and its PNGs; returns paths and figures."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    out_dir = Path(out_dir) if out_dir else run_dir / "report"
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_checkpoint(run_dir)
    model, tokenizer, meta = load_checkpoint(checkpoint, device=device)
    config, data, method = _run_config(run_dir, meta)
    records = read_metrics(run_dir / "metrics.jsonl")
    plots = plot_curves(records, out_dir)

    evaluations = run_evals(model, tokenizer, replace(config, images=eval_images), data, evals) if evals else {}
    held_out = captions_for(replace(config, images=num_images), data, model.config.image_size)
    predictions = generate(model, tokenizer, held_out.images, **decoding).texts if num_images else []
    samples = []
    for i, (image, refs, prediction) in enumerate(zip(held_out.images, held_out.references, predictions)):
        _save_image(image, out_dir / "images" / f"{i:03d}.png")
        samples.append({"image": f"images/{i:03d}.png", "prediction": prediction, "truth": refs[0]})
    last = {k: v for r in records for k, v in r.items() if k != "step"}
    # What the run chose automatically (a recipe records it per stage, next to the stage's checkpoints).
    resolved = _resolved(run_dir) or _resolved(checkpoint.parent.parent)
    summary = {"run": str(run_dir.resolve()), "checkpoint": checkpoint.name, "step": meta.get("step", "?"),
               "model": f"{model.config.encoder} + decoder {model.config.decoder} @ {model.config.image_size}px",
               "method": method, "dataset": data.dataset,
               **{f"resolved {k}": v for k, v in resolved.items()},
               **{f"last {k}": last[k] for k in ("loss", "val_loss") if k in last}}
    page = render_html(f"OpenVision 2 run report: {run_dir.name}", summary, plots, evaluations, samples)
    (out_dir / "index.html").write_text(page, encoding="utf-8")
    return {"html": str(out_dir / "index.html"), "plots": [str(out_dir / p) for p, _ in plots],
            "images": len(samples), "evaluations": evaluations, "checkpoint": str(checkpoint),
            "exact_match": sum(s["prediction"].strip() == s["truth"].strip() for s in samples) / max(len(samples), 1)}
