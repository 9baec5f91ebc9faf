"""The GPU check's text summary (gpu_check.txt): one line per figure, written after every finished
entry, so that a check stopped half-way still has its summary. An entry that failed shows as
"ERROR" (or "OUT OF MEMORY") with its reason; one not run (yet) as "-"; a largest-batch search
that ran out of time as ">=B" (a lower bound: the largest batch found to fit so far)."""

from __future__ import annotations

METHODS = ("openvision2", "openvision1")


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def failure(entry: dict) -> str:
    return f"{'OUT OF MEMORY' if entry.get('oom') else 'ERROR'} ({entry['error']})"


def max_batch_text(entry: dict | None) -> str:
    if not entry:
        return "-"
    if "error" in entry:
        return failure(entry)
    return (f"{'>=' if entry['stopped_early'] else ''}{entry['max_batch']}{'+' if entry['at_limit'] else ''}")


def ratio_text(ov2: dict | None, ov1: dict | None, label: str) -> str | None:
    if not (ov2 and ov1 and "max_batch" in ov2 and "max_batch" in ov1):
        return None
    bound = " (a search stopped early: not a measured ratio)" if ov2["stopped_early"] or ov1["stopped_early"] else ""
    return f"{ov2['max_batch'] / ov1['max_batch']:.2f}x {label}{bound}"


def summarize(result: dict) -> str:
    s = result["sections"]
    plan = result["plan"]
    status = ("OK" if result["ok"] else "FAILED") if result["finished"] else "INCOMPLETE (stopped or still running)"
    lines = [f"GPU check{' (DRY RUN: tiny models, CPU)' if result['dry_run'] else ''}: {result['device_name']}, "
             f"torch {result['torch']}, {result['date']}, {result['seconds']:.0f} s, {status}",
             f"MFU against {result['peak_tflops']:.4g} TFLOP/s ({result['peak_source']})"]
    if result.get("injected_oom"):
        lines.append(f"(test hook: an out-of-memory injected in {result['injected_oom']})")
    bench, no_ac, ac = s.get("bench", {}), s.get("max_batch", {}), s.get("max_batch_ac", {})
    for res in map(str, plan["resolutions"]):
        point = bench.get(res)
        batch = point.get("batch", result["batch"]) if point else result["batch"]
        head = f"{plan['encoder']} @{res} batch {batch} {plan['precision']}:"
        if point and "error" in point:
            head += f" timing {failure(point)}"
        elif point and point.get("oom_at_batch"):
            head += f" (batch {point['oom_at_batch']} ran out of memory)"
        lines.append(head)
        for method in METHODS:
            timing = ""
            if point and "methods" in point:
                r, q = point["methods"][method], point["ratios_vs_openvision2"][method]
                timing = (f"step {r['step_s']:.3f} s ({q['time']:.2f}x)  peak {_gib(r['peak_mem_bytes'])} "
                          f"({q['memory']:.2f}x)  MFU {100 * r['mfu']:.1f}%  ")
            lines.append(f"  {method:12s} {timing}max batch {max_batch_text(no_ac.get(res, {}).get(method))} / "
                         f"with AC {max_batch_text(ac.get(res, {}).get(method))}")
        ratios = [t for t in (ratio_text(*(no_ac.get(res, {}).get(m) for m in METHODS), "without AC"),
                              ratio_text(*(ac.get(res, {}).get(m) for m in METHODS), "with AC")) if t]
        if ratios:
            lines.append(f"  max batch OV2/OV1: {', '.join(ratios)} (paper: 4x)")
    c = s.get("compile", {})
    eager, compiled = c.get("eager", {}), c.get("compiled", {})
    if "speedup" in c:
        lines.append(f"torch.compile ({c['backend']}) OV2 @{c['res']} batch {c['batch']}: eager {eager['step_s']:.3f} s, "
                     f"compiled {compiled['step_s']:.3f} s ({c['speedup']:.2f}x)")
    elif c:
        lines.append("torch.compile: " + ", ".join(f"{label} {failure(e) if 'error' in e else 'ok' if e else '-'}"
                                                    for label, e in (("eager", eager), ("compiled", compiled))))
    for name in ("fsdp", "train"):
        t = s.get(name)
        label = f"FSDP2 1 rank ({'nccl' if plan['device'] == 'cuda' else 'gloo'})" if name == "fsdp" else \
            f"training run, {plan['train_steps']} steps"
        lines.append(f"{label}: -" if not t else f"{label}: {failure(t)}" if "error" in t else
                     f"{label}: loss {t['first_loss']:.3f} -> {t['last_loss']:.3f} "
                     f"({'falls' if t['loss_fell'] else 'DOES NOT FALL'}), {t['wall_s']:.0f} s")
    if any(">=" in line for line in lines):
        lines.append(">=B: that search stopped early at its time budget (stopped_early): B fits, larger batches were "
                     "not all tried")
    return "\n".join(lines) + "\n"
