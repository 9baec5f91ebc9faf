"""The comparison as one HTML page (OUT/index.html) with PNG plots: a table of costs and evaluations,
quality against training time and against peak memory, and the loss curves overlaid. The page marks
itself once every plot has loaded (eval/report.py's marker), which the rendering test checks."""

from __future__ import annotations

import html
from pathlib import Path

from ..eval.report import LOADED_MARKER, STYLE

QUALITY_PREFERENCE = ("vlm/overall", "probe/linear_pooled", "probe/attentive", "probe/knn", "zeroshot/top1")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _quality_plot(result: dict, x_key: str, x_label: str, scale: float, path: Path) -> None:
    plt = _plt()
    metrics = [k for k in QUALITY_PREFERENCE if any(k in r["evals"] for r in result["methods"].values())]
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    markers = "osD^v<>"
    for i, metric in enumerate(metrics):
        points = [(r[x_key] * scale, r["evals"][metric], m) for m, r in result["methods"].items() if metric in r["evals"]]
        ax.plot([p[0] for p in points], [p[1] for p in points], linestyle=":", marker=markers[i % len(markers)],
                label=metric)
        for x, y, method in points:
            ax.annotate(method, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy")
    ax.set_title(f"quality vs {x_label.split(' (')[0]}")
    ax.grid(alpha=0.3)
    if metrics:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _loss_plot(result: dict, path: Path, by_time: bool) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    for method, r in result["methods"].items():
        scale = r["step_s"] if by_time else 1.0
        # train: the method's own objective (OV1 adds its contrastive terms, CapPa its parallel examples);
        # val: the held-out caption loss, the one curve measured alike for every method
        for kind, style, label in (("train", "-", "training objective"), ("val", "--", "held-out caption loss")):
            points = r["loss"][kind]
            if points:
                ax.plot([s * scale for s, _ in points], [v for _, v in points], style, label=f"{method} {label}")
    ax.set_xlabel("training time (s, interleaved step time x steps)" if by_time else "step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("loss curves" + (" against time" if by_time else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return html.escape(str(value))


def write_page(result: dict, out: Path, name: str = "index.html") -> Path:
    """OUT/name and its plots (named after the budget, so the equal-steps and equal-budget pages coexist)."""
    tag = result["budget"]
    plots = [(f"{tag}_quality_vs_time.png", "quality vs training time"),
             (f"{tag}_quality_vs_memory.png", "quality vs peak memory"),
             (f"{tag}_loss_by_step.png", "loss curves by step"), (f"{tag}_loss_by_time.png", "loss curves by time")]
    _quality_plot(result, "train_time_s", "training time (s, interleaved step time x steps)", 1.0, out / plots[0][0])
    _quality_plot(result, "peak_mem_bytes", "peak memory (MiB)", 1 / 2**20, out / plots[1][0])
    _loss_plot(result, out / plots[2][0], by_time=False)
    _loss_plot(result, out / plots[3][0], by_time=True)

    methods = result["methods"]
    metrics = sorted({k for r in methods.values() for k in r["evals"]})
    columns = [("steps", "steps"), ("train_time_s", "train time (s)"), ("train_wall_s", "wall (s, as run)"),
               ("step_s", "step (s)"), ("peak_mem_bytes", "peak mem (MiB)"),
               ("forward_gflops_per_image", "GFLOPs/image"), ("train_flops", "train FLOPs")]
    title = (f"ov2 compare: {', '.join(methods)} ({result['preset']}, budget {result['budget']}, "
             f"{result['base_steps']} steps of {result['reference']})")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p id='load-status'>loading plots…</p><h2>Costs and evaluations</h2><table><tr><th>method</th>"]
    parts += [f"<th>{html.escape(label)}</th>" for _, label in columns]
    parts += [f"<th>{html.escape(m)}</th>" for m in metrics] + ["</tr>"]
    for method, r in methods.items():
        row = [r[key] / 2**20 if key == "peak_mem_bytes" else r[key] for key, _ in columns]
        row += [r["evals"].get(m, "-") for m in metrics]
        parts.append(f"<tr><td>{html.escape(method)}</td>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
    parts.append("</table><h2>Cost ratios against " + html.escape(result["reference"]) + "</h2><table>"
                 "<tr><th>method</th><th>time / step</th><th>peak memory</th><th>FLOPs / image</th></tr>")
    for method, ratio in result["ratios_vs_reference"].items():
        parts.append(f"<tr><td>{html.escape(method)}</td><td>{ratio['time_per_step']:.3f}</td>"
                     f"<td>{ratio['memory']:.3f}</td><td>{ratio['flops_per_image']:.3f}</td></tr>")
    parts.append("</table><h2>Plots</h2><div class='plots'>")
    parts += [f"<img src='{name}' alt='{html.escape(t)}' title='{html.escape(t)}'>" for name, t in plots]
    parts.append("</div><h2>What differs between the runs</h2>")
    if result["differences"]:
        parts.append("<table><tr><th>field</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in methods) + "</tr>")
        for key, values in result["differences"].items():
            parts.append(f"<tr><td>{html.escape(key)}</td>" +
                         "".join(f"<td>{_cell(values.get(m, '-'))}</td>" for m in methods) + "</tr>")
        parts.append("</table>")
    else:
        parts.append("<p>nothing: the runs share every training setting</p>")
    measured = result["cost_measurement"]
    parts.append(f"<p>Everything else is shared: data, seed, data order, encoder, resolution, batch and "
                 f"schedule. Costs: {measured['rounds']} interleaved rounds on {measured['device']} in "
                 f"{measured['precision']}, one worker process per method (bench/train_step.py); "
                 "training time = steps x that step time, so that the methods are compared under the same "
                 "machine conditions; 'wall' is the time the runs actually took. Each loss curve is its "
                 "method's own objective (OpenVision 1's adds the contrastive term and predicts the caption "
                 "in parallel), so the curves compare in shape, not in level.</p>")
    vlm = result.get("vlm_protocol")
    if vlm and any(m.startswith("vlm/") for m in metrics):
        preset = result["options"].get("vlm_preset", "quick")
        parts.append(f"<p>VLM columns: <code>ov2 eval vlm --preset {html.escape(preset)}</code> on every encoder "
                     f"alike: {vlm['tokens']} tokens, LM {html.escape(vlm['lm'])}"
                     f"{' (trained in stage 1 too)' if vlm['stage1_train_lm'] else ''}, {vlm['train_images']} "
                     f"training images, {vlm['stage1_steps']} + {vlm['stage2_steps']} steps at lr "
                     f"{vlm['stage1_lr']:g} / {vlm['stage2_lr']:g}, {vlm['test_images']} scored images.</p>")
    parts.append(f"{LOADED_MARKER}</body></html>")
    page = out / name
    page.write_text("\n".join(parts), encoding="utf-8")
    return page
