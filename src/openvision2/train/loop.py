"""`ov2 train`: the single-process training loop (data -> model -> loss -> AdamW -> metrics/checkpoints)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import mark_latest, save_checkpoint
from ..data.build import CaptionCollate, build_dataset, endless_batches, fixed_batch
from ..errors import UserError
from ..generate import greedy_caption
from ..precision import autocast, resolve_precision
from ..preprocess import normalize
from ..tokenizer import CaptionTokenizer
from .config import TrainConfig
from .factory import build_model
from .optim import build_optimizer, warmup_cosine


def build_tokenizer(config: TrainConfig, train_set) -> CaptionTokenizer:
    if config.tokenizer == "wordpiece":
        return CaptionTokenizer.wordpiece(config.tokenizer_path or None)
    if config.tokenizer == "bpe":
        return CaptionTokenizer.train_bpe(train_set.captions(), config.bpe_vocab_size)
    raise UserError(f"unknown tokenizer {config.tokenizer!r}: use wordpiece or bpe")


def model_inputs(batch: dict, device, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
    """The batch's tensors other than the images (caption tokens, and whatever else a method needs)."""
    return {k: v[rows].to(device, non_blocking=True) for k, v in batch.items()
            if isinstance(v, torch.Tensor) and k != "images"}


@torch.no_grad()
def evaluate_loss(model, batch: dict, device, dtype, chunk: int = 64) -> float:
    """Held-out caption loss (token mean), in eval mode: the decoder sees every visual token."""
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    for start in range(0, len(batch["images"]), chunk):
        images = normalize(batch["images"][start:start + chunk].to(device))
        with autocast(device, dtype):
            out = model(images, **model_inputs(batch, device, slice(start, start + chunk)))
        nll, count = nll + out["nll_sum"].item(), count + out["num_tokens"].item()
    model.train(was_training)
    return nll / max(count, 1)


class MetricsLog:
    def __init__(self, path: Path):
        self.file = path.open("a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


def check_config(config: TrainConfig) -> None:
    for key in ("steps", "batch_size", "log_every", "eval_every", "ckpt_every", "val_samples", "train_samples"):
        if getattr(config, key) < 1:
            raise UserError(f"{key} must be at least 1, got {getattr(config, key)}")
    if config.keep_checkpoints < 1:
        raise UserError(f"keep_checkpoints must be at least 1, got {config.keep_checkpoints}")


def train(config: TrainConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train from scratch into out_dir; returns a summary (first/last held-out loss, captions)."""
    check_config(config)
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_precision(config.precision, device)

    train_set = build_dataset(config.dataset, "train", config.train_samples, config.image_size, config.seed)
    val_set = build_dataset(config.dataset, "val", config.val_samples, config.image_size, config.seed)
    tokenizer = build_tokenizer(config, train_set)
    model = build_model(config, tokenizer).to(device)
    optimizer = build_optimizer(model, config.peak_lr, config.weight_decay, (config.beta1, config.beta2), config.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.warmup_steps, config.steps))
    collate = CaptionCollate(tokenizer, config.text_len)
    val_batch = fixed_batch(val_set, collate, config.val_samples)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    metrics = MetricsLog(out_dir / "metrics.jsonl")
    checkpoints = out_dir / "checkpoints"
    params = sum(p.numel() for p in model.parameters())
    print(f"model {config.encoder} + decoder {config.decoder}: {params / 1e6:.2f}M parameters; "
          f"{config.tokenizer} vocab {tokenizer.vocab_size}; {str(dtype).removeprefix('torch.')} on {device}; "
          f"peak lr {config.peak_lr:.3g}", flush=True)

    def save(step: int) -> None:
        name = f"step-{step:07d}"
        save_checkpoint(checkpoints / name, model, tokenizer, {"step": step, "train": config.to_dict()})
        mark_latest(checkpoints, name)
        for old in sorted(checkpoints.glob("step-*"))[:-config.keep_checkpoints]:
            shutil.rmtree(old)

    first_val = evaluate_loss(model, val_batch, device, dtype)
    metrics.write({"step": 0, "val_loss": first_val})
    batches = endless_batches(train_set, config.batch_size, collate, config.num_workers, config.seed)
    bar = tqdm(range(1, config.steps + 1), disable=not progress, desc="train", dynamic_ncols=True)
    window_start, window_images, val_loss = time.perf_counter(), 0, first_val
    model.train()
    for step in bar:
        batch = next(batches)
        images = normalize(batch["images"].to(device, non_blocking=True))
        with autocast(device, dtype):
            out = model(images, **model_inputs(batch, device))
        (out["loss"] * config.caption_loss_weight).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window_images += len(images)

        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - window_start
            record = {"step": step, "loss": out["loss"].item(), "lr": schedule.get_last_lr()[0],
                      "grad_norm": grad_norm.item(), "images_per_s": window_images / elapsed}
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}")
            window_start, window_images = time.perf_counter(), 0
        if step % config.eval_every == 0 or step == config.steps:
            val_loss = evaluate_loss(model, val_batch, device, dtype)
            metrics.write({"step": step, "val_loss": val_loss})
            bar.write(f"step {step}: held-out caption loss {val_loss:.3f}")
        if step % config.ckpt_every == 0 or step == config.steps:
            save(step)
    bar.close()

    shown = min(config.show_captions, len(val_set))
    captions = greedy_caption(model, tokenizer, val_batch["images"][:shown])
    print(f"\nheld-out caption loss: {first_val:.3f} at start -> {val_loss:.3f} after {config.steps} steps")
    print(f"checkpoint: {checkpoints / (checkpoints / 'latest').read_text().strip()}\n")
    for i, (predicted, truth) in enumerate(zip(captions, val_batch["texts"])):
        print(f"[held-out {i}] {predicted}\n{'':14s}(truth: {truth})")
    return {"first_val_loss": first_val, "final_val_loss": val_loss, "captions": captions,
            "truths": val_batch["texts"][:shown]}
