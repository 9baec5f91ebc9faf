"""`ov2 plan`'s memory model against the real step on this CPU: predicted vs measured peak per process.

    python scripts/plan_vs_bench.py OUT_DIR [--encoders Ti/16,S/16] [--batches 1,2,8]

Measured: `ov2 bench --max-batch --max-batch-fresh` (a fresh worker per trial; each trial's peak is the
worker's resident high-water mark minus its resident size before the model was built; with --ranks 2
the model is wrapped with FSDP2 over 2 gloo ranks and the peak is the larger rank's).
Predicted: the fake run of the same step with the CPU's own autocast and loss path
(plan/fake.py tracked_steps(..., cuda=False), FSDP2 over the fake process group at world size 2), plus
the CPU allowance: what a process holds that is not a tensor (oneDNN's kernels and scratch, the
allocator's free lists, the autograd graph's objects, gloo's buffers), which no tracker sees. The
allowance is not fitted to the models compared; it is measured on the nano model (nano/16 + nano
decoder, the same step at batch 1) in two parts:
- on 2 ranks, gloo's own copies of what FSDP2 gathers and reduces, which are not torch tensors and grow
  with the largest FSDP unit (the root: embeddings and the vocabulary head, beside the blocks): bytes per
  root parameter = (untracked at vocabulary 32,000 - untracked at 512) / (root parameters of the one -
  of the other), nano, OpenVision 2, no checkpointing;
- the rest, a constant per kind of step (method, checkpointing, rank count): nano's untracked bytes
  (measured - tracked) less its gloo part.
A prediction is tracked + that constant + gloo bytes per root parameter x the model's root parameters.

Each measurement is kept as OUT_DIR/<name>.json (a rerun skips it); the markdown table is printed last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from openvision2.data.config import WORDPIECE_VOCAB

METHODS = ("openvision2", "openvision1")
MODES = ("none", "full")
RANKS = (1, 2)
CALIBRATION = "nano/16"
WORDS = WORDPIECE_VOCAB  # the vocabulary of the bench's and the plan's default shape
MIB = 2 ** 20


def name(kind: str, encoder: str, method: str, mode: str, ranks: int, vocab: int) -> str:
    return f"{kind}_{encoder.replace('/', '-')}_{method}_{mode}_{ranks}" + ("" if vocab == WORDS else f"_v{vocab}")


def bench(out: Path, encoder: str, method: str, mode: str, ranks: int, batches: list[int], vocab: int = 0) -> dict:
    """{batch: measured peak bytes} from `ov2 bench` (cached)."""
    vocab = vocab or WORDS
    path = out / f"{name('bench', encoder, method, mode, ranks, vocab)}.json"
    if not path.exists():
        decoder = "nano" if encoder == CALIBRATION else encoder.split("/")[0]
        cmd = [sys.executable, "-m", "openvision2", "bench", "--encoder", encoder, "--decoder", decoder,
               "--image-size", "224", "--vocab", str(vocab), "--methods", method, "--rounds", "0",
               "--max-batch", "--max-batch-limit", str(max(batches)), "--mem-budget", "6", "--max-batch-fresh",
               "--precision", "bf16", "--activation-checkpointing", mode, "--threads", "1", "--ranks", str(ranks),
               "--json"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        trials = json.loads(done.stdout)["max_batch"]["methods"][method]["trials"]
        path.write_text(json.dumps({"command": " ".join(cmd[2:]), "trials": trials}))
    trials = json.loads(path.read_text())["trials"]
    return {t["batch"]: t["peak_mem_bytes"] for t in trials if t["peak_mem_bytes"] is not None}


def config_of(encoder: str, method: str, ranks: int, vocab: int):
    from openvision2.train.config import TrainConfig

    config = TrainConfig()
    decoder = "nano" if encoder == CALIBRATION else encoder.split("/")[0]
    for key, value in (("method", method), ("encoder", encoder), ("decoder", decoder), ("image_size", 224),
                       ("text_len", 128), ("alt_text_len", 80), ("precision", "bf16"),
                       ("parallel", "fsdp" if ranks > 1 else "none"),
                       ("tokenizer", "wordpiece" if vocab == WORDS else "bpe"), ("bpe_vocab_size", vocab)):
        config.set(key, value)
    return config


def root_parameters(encoder: str, method: str, vocab: int = 0) -> int:
    """Parameters of the FSDP root unit (all but the transformer blocks, which are units of their own)."""
    from openvision2.methods import build_model
    from openvision2.plan.fake import model_config
    from openvision2.train.parallel import transformer_blocks

    model = build_model(model_config(config_of(encoder, method, 1, vocab or WORDS)), device="meta")
    blocks = sum(p.numel() for _, _, block in transformer_blocks(model) for p in block.parameters())
    return sum(p.numel() for p in model.parameters()) - blocks


def predict(out: Path, encoder: str, method: str, mode: str, ranks: int, batches: list[int], vocab: int = 0) -> dict:
    """{batch: tracked bytes} of the fake run (cached)."""
    vocab = vocab or WORDS
    path = out / f"{name('plan', encoder, method, mode, ranks, vocab)}.json"
    if not path.exists():
        from openvision2.plan.fake import tracked_steps

        tracked = tracked_steps(config_of(encoder, method, ranks, vocab), ranks, tuple(batches), mode, cuda=False)
        path.write_text(json.dumps({str(b): t.total for b, t in zip(batches, tracked)}))
    return {int(b): v for b, v in json.loads(path.read_text()).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--encoders", default="Ti/16,S/16")
    parser.add_argument("--batches", default="1,2,8")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    def untracked(method, mode, ranks, vocab=0):
        return (bench(args.out, CALIBRATION, method, mode, ranks, [1], vocab)[1]
                - predict(args.out, CALIBRATION, method, mode, ranks, [1], vocab)[1])

    small = 512
    per_root = ((untracked("openvision2", "none", 2) - untracked("openvision2", "none", 2, small))
                / (root_parameters(CALIBRATION, "openvision2") - root_parameters(CALIBRATION, "openvision2", small)))
    print(f"gloo: {per_root:.2f} bytes per root parameter", flush=True)

    def gloo(encoder, method, ranks):
        return per_root * root_parameters(encoder, method) if ranks > 1 else 0

    allowance = {}
    for method in METHODS:
        for mode in MODES:
            for ranks in RANKS:
                allowance[method, mode, ranks] = untracked(method, mode, ranks) - gloo(CALIBRATION, method, ranks)
                print(f"allowance {method}, checkpointing {mode}, {ranks} rank(s): "
                      f"{allowance[method, mode, ranks] / MIB:.0f} MiB + gloo", flush=True)
    rows = ["| encoder | method | checkpointing | ranks | " + " | ".join(f"batch {b}: predicted / measured"
                                                                         for b in batches) + " |",
            "|" + "---|" * (4 + len(batches))]
    worst = 0.0
    for encoder in args.encoders.split(","):
        for method in METHODS:
            for mode in MODES:
                for ranks in RANKS:
                    measured = bench(args.out, encoder, method, mode, ranks, batches)
                    tracked = predict(args.out, encoder, method, mode, ranks, batches)
                    cells = []
                    for b in batches:
                        if b not in measured:
                            cells.append("not measured")
                            continue
                        predicted = tracked[b] + allowance[method, mode, ranks] + gloo(encoder, method, ranks)
                        error = predicted / measured[b] - 1
                        worst = max(worst, abs(error))
                        cells.append(f"{predicted / MIB:.0f} / {measured[b] / MIB:.0f} MiB ({error:+.0%})")
                    rows.append(f"| {encoder} | {'OV2' if method == 'openvision2' else 'OV1'} | {mode} | {ranks} | "
                                + " | ".join(cells) + " |")
                    print(rows[-1], flush=True)
    print("\n".join(rows))
    print(f"largest difference: {worst:.1%}")


if __name__ == "__main__":
    main()
