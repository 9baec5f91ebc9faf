"""`ov2 train`: data -> model -> loss -> AdamW -> metrics/checkpoints, on one process or under torchrun.

One step = `grad_accum` micro-batches of `micro_batch` images per rank (train/batching.py). The
objective is the token mean of the caption loss over the whole global batch (DESIGN.md §3.4): each micro-batch backpropagates its summed token loss times
world_size / (global token count, all-reduced before the forward), which DDP's and FSDP's gradient
averaging turns into exactly that mean; 1 rank x 4 micro-batches and 2 ranks x 2 give the same
gradients. A method whose loss has parts besides the token mean (OpenVision 1's contrastive loss)
gets those parts averaged over micro-batches and ranks.

The random visual-token masks are drawn from a seed of (run seed, step, global micro-batch index),
so a run's randomness does not depend on how many ranks share the batch, and a resume replays it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .. import durable
from ..data.build import CaptionCollate, build_from_config, build_tokenizer, fixed_batch, train_batches
from ..errors import DataSourceFailed, UserError
from ..generate import greedy_caption
from ..logs import get_logger, setup_logging
from ..methods import get_method
from ..models.losses import caption_targets, objective
from ..precision import DTYPES, autocast, resolve_precision_name
from ..preprocess import normalize
from ..tokenizer import CaptionTokenizer
from . import rundir, state as ckpt
from .config import TrainConfig
from .backend import apply_backend, backend_for, to_device
from .batching import device_memory_gib, requested_split, split_batch
from .distributed import World, all_reduce_host, all_reduce_sum, barrier, init_world
from .factory import build_model
from .faults import BadStepGuard, PreemptionFlag, data_source_failed
from .init_from import load_init_weights, tokenizer_source
from .metrics import MetricsLog, Window, device_peak_tflops, train_flops_per_sample
from .optim import build_optimizer, warmup_cosine
from .parallel import materialize, no_gradient_sync, parallelize, resolve_parallel, unwrap

logger = get_logger("train")


def model_inputs(batch: dict, device, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
    """The batch's tensors other than the images (caption tokens, and whatever else a method needs)."""
    return {k: v[rows].to(device, non_blocking=True) for k, v in batch.items()
            if isinstance(v, torch.Tensor) and k != "images"}


@torch.no_grad()
def evaluate_loss(model, batch: dict, device, dtype, chunk: int = 64) -> float:
    """Held-out caption loss (token mean), in eval mode: the decoder sees the model's eval keep ratio
    of the visual tokens (models/masking.py keep_eval_tokens)."""
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


def check_config(config: TrainConfig, world: World) -> None:
    """Everything that can be checked before the (possibly slow) tokenizer and dataset are built."""
    config.validate()
    check_data(config)
    requested_split(config, world.world_size)
    resolve_parallel(config.parallel.strategy, world.world_size)


def check_data(config: TrainConfig) -> None:
    """Data setups that would run but measure nothing meaningful are refused up front."""
    data = config.data
    if get_method(config.model.method).has_text_encoder and data.dataset == "shards" and (
            not data.alt_caption_key or data.alt_caption_key == data.caption_key):
        # Without a distinct alt-text the decoder's prefix (the alt-text through the text encoder) is
        # the very caption it must write, and the caption loss collapses (DESIGN.md §6).
        raise UserError(f"method={config.model.method} on shards needs the alt-text in a field other than the "
                        f"caption ({data.caption_key!r}): set alt_caption_key=KEY (e.g. txt or org_caption)")
    if data.dataset == "synthetic" and not data.allow_embedded:
        raise UserError("this configuration is the paper's setup and expects a recaptioned corpus: set "
                        "train_shards=... (dataset=shards), or add allow_embedded=true to run it on the "
                        "embedded dataset anyway")


def micro_seed(seed: int, step: int, micro: int) -> int:
    return (seed * 1_000_003 + step) * 65_537 + micro


def loss_tokens(batch: dict, pad_id: int) -> int:
    """Caption tokens that count in the loss: the same mask the models use (DESIGN.md §3.3)."""
    return int(caption_targets(batch["captions"], pad_id)[2].sum())


TRACE_SAMPLES = "OV2_TRACE_SAMPLES"  # a directory: every rank logs the samples it trains on there


def trace_samples(directory: str, step: int, micro: list[dict], world: World) -> None:
    """One line per step in DIRECTORY/rank-R.jsonl: the step, torchrun's restart count, the time and the
    keys of this rank's samples (shards name them), for scripts/scale_check.sh to compare across resumes."""
    record = {"step": step, "attempt": world.restart_count, "time": time.time(),
              "keys": [key for batch in micro for key in batch.get("keys", ())]}
    with open(Path(directory) / f"rank-{world.rank:05d}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def periodic_evals(model, tokenizer: CaptionTokenizer, config: TrainConfig, device, dtype) -> dict[str, float]:
    """The configured evaluations (zero-shot, caption metrics, probes) of eval/periodic.py."""
    if not config.eval.evals:
        return {}
    from ..eval.periodic import HeldOut, run_evals

    held_out = HeldOut(config.data.dataset, config.data.val_shards, config.run.seed)
    with autocast(device, dtype):
        return run_evals(model, tokenizer, config.eval, held_out)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def grad_norm(model, device) -> torch.Tensor:
    """The global gradient norm, left on the device (under FSDP a collective, still no host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def read_steps(unread: list, guard: BadStepGuard, last_saved: str | None) -> tuple[float, float]:
    """The host values of the steps run since the last read, in one transfer (the only host sync of
    the training steps); the guard counts each of them. Returns the last step's (loss, grad norm)."""
    values = torch.stack([torch.stack([loss.double(), norm.double()]) for _, loss, norm in unread]).tolist()
    for (step, _, _), (loss, norm) in zip(unread, values):
        guard.check(step, loss, norm, last_saved)
    unread.clear()
    return values[-1]


def train(config: TrainConfig, out_dir: str | Path, progress: bool = True, resume: bool = False,
          overwrite: bool = False, inherit: dict | None = None) -> dict:
    """Train into out_dir (from scratch, from config.init_from's weights, or, with resume=True, from
    out_dir's latest checkpoint); returns a summary (first/last held-out loss, captions, ...).
    out_dir is locked for the run; a fresh run refuses a non-empty out_dir unless overwrite=True.
    inherit: automatic choices recorded by an earlier run (a recipe's previous stage) to reuse."""
    world = init_world()
    check_config(config, world)
    out_dir = Path(out_dir)
    setup_logging()
    # torchrun's elastic agent restarts failed workers: they pick the run up where it was saved.
    resume = resume or world.restart_count > 0
    with rundir.owned(out_dir, world, resume, overwrite):
        try:
            return _train(config, out_dir, world, progress, resume, inherit or {})
        except DataSourceFailed as err:  # the step taken last is saved: say where, and how to continue
            raise data_source_failed(err, out_dir / "checkpoints") from None


def resolve_choices(config: TrainConfig, out_dir: Path, world: World, resume: bool, inherit: dict) -> dict:
    """Every choice made automatically, made once per run: a resume (or a recipe's later stage, or a
    torchrun restart) reuses what was recorded in out_dir/config.json, and refuses a contradiction."""
    par = config.parallel
    previous = {**inherit, **(rundir.recorded(out_dir) if resume else {})}
    if previous.get("world_size") != world.world_size:  # "auto" parallelism depends on the world size
        previous.pop("parallel", None)
    requested = {"precision": par.precision, "parallel": par.strategy}
    automatic = {"precision": resolve_precision_name(par.precision, world.device),
                 "parallel": resolve_parallel(par.strategy, world.world_size)}
    chosen = rundir.reconcile(requested, automatic, previous, out_dir)
    threads = int(previous.get("threads", torch.get_num_threads()))
    rundir.apply_threads(threads)
    # The micro-batch from this run's own record only (a recipe's next stage has its own batch and size),
    # and only at the world size that chose it: on another, each rank's share differs and it is chosen again.
    own = rundir.recorded(out_dir) if resume else {}
    recorded = own.get("micro_batch") if own.get("world_size") == world.world_size else None
    split = split_batch(config, world.world_size, device_memory_gib(world.device), recorded)
    return {**chosen, "threads": threads, "world_size": world.world_size, "micro_batch": split.micro_batch,
            "grad_accum": split.grad_accum, "batch_split": split.describe()}


def _train(config: TrainConfig, out_dir: Path, world: World, progress: bool, resume: bool, inherit: dict) -> dict:
    device = world.device
    checkpoints = out_dir / "checkpoints"
    optim, run, par = config.optim, config.run, config.parallel
    resolved = resolve_choices(config, out_dir, world, resume, inherit)
    dtype, parallel = DTYPES[resolved["precision"]], resolved["parallel"]
    backend = backend_for(device)  # TF32, fused AdamW, pinned batches on CUDA (train/backend.py)
    apply_backend(backend)
    # progress messages from rank 0 only (logs.py routes them around the progress bar)
    log = logger.info if world.is_main else (lambda *a, **k: None)
    accum = resolved["grad_accum"]
    log(f"run {out_dir}: {resolved['batch_split']}; precision {resolved['precision']} (asked {par.precision}), "
        f"parallel {parallel} (asked {par.strategy}), {resolved['threads']} threads, {world.world_size} rank(s)")
    resume_from = ckpt.latest_checkpoint(checkpoints, warn=log) if resume else None
    if resume and resume_from is None and checkpoints.is_dir():
        log(f"no checkpoint in {checkpoints} yet: starting from scratch")
    if resume_from is not None:
        rundir.check_resume_settings(config, resume_from)
    if world.is_main and checkpoints.is_dir():
        ckpt.clean_partial_saves(checkpoints)
    barrier(world)

    torch.manual_seed(run.seed)
    image_size = config.model.image_size
    train_set = build_from_config(config.data, "train", image_size, run.seed)
    val_set = build_from_config(config.data, "val", image_size, run.seed)
    # An encoder-only init_from (an import or export) has no tokenizer: the run's config builds one.
    source = resume_from or (run.init_from and tokenizer_source(run.init_from))
    tokenizer = CaptionTokenizer.load(source) if source else build_tokenizer(config.data, train_set)

    # --- model: built (on meta for 1B+ models), wrapped in one place, then initialised ---
    model = build_model(config.model, tokenizer, device="meta" if par.meta_init else None)
    # FSDP shards the meta model, then materialises each rank's shards only; DDP (which broadcasts
    # rank 0's weights when it wraps) and a single process need the whole model on the device first.
    shard_first = par.meta_init and parallel == "fsdp"
    if not shard_first:
        materialize(model, device) if par.meta_init else model.to(device)
    wrapped = parallelize(model, parallel, activation_checkpointing=par.activation_checkpointing,
                          compile=par.compile, param_dtype=dtype, device=device)
    if shard_first:
        materialize(model, device)
    if run.init_from and resume_from is None:
        log(load_init_weights(run.init_from, wrapped, model.encoder, config))
    optimizer = build_optimizer(model, optim.peak_lr, optim.weight_decay, (optim.beta1, optim.beta2), optim.eps,
                                fused=backend.fused_adamw)

    model_config = unwrap(model).config
    collate = CaptionCollate(tokenizer, model_config.text_len, get_method(model_config.method).batch_fields,
                             model_config.alt_text_len)
    # This rank's micro-batches, endlessly: an iterable with state_dict() / load_state_dict() (saved
    # in every checkpoint, per rank) and optionally bad_samples() -> {reason: count} (logged).
    batches = train_batches(config.data, train_set, collate, batch_size=optim.batch_size,
                            micro_batches=accum, rank=world.rank, world_size=world.world_size, seed=run.seed)
    val_batch = fixed_batch(val_set, collate, config.data.val_samples)
    # FSDP's forward must run on every rank; the plain module serves evaluation otherwise.
    eval_model = wrapped if parallel == "fsdp" else unwrap(wrapped)

    start_step, first_val, guard = 0, None, BadStepGuard(run.max_bad_steps)
    if resume_from is not None:
        saved = ckpt.load_training_state(resume_from, wrapped, optimizer, world)
        start_step, first_val = saved["step"], saved.get("first_val_loss")
        batches.load_state_dict(saved["loader"])
        guard.skipped = saved.get("skipped_steps", 0)
        log(f"resumed from {resume_from} at step {start_step}")

    resolved["tokenizer"] = f"{config.data.tokenizer} vocab {tokenizer.vocab_size}"
    metrics, recorded_at_start = None, set()
    if world.is_main:
        if resume:  # the steps after the checkpoint are done again: their old records go
            recorded_at_start = rundir.rewind_metrics(out_dir, start_step)
        durable.write_durably(out_dir / "config.json", json.dumps({**config.to_dict(), "resolved": resolved},
                                                                  indent=2) + "\n")
        metrics = MetricsLog(out_dir, run.tensorboard, config.to_dict(), start_step if resume else None)
    params = sum(p.numel() for p in model.parameters())
    where = f"{device}" if world.world_size == 1 else f"{world.world_size} x {device.type} ({parallel})"
    log(f"model {model_config.encoder} + decoder {model_config.decoder}: {params / 1e6:.2f}M "
        f"parameters; {config.data.tokenizer} vocab {tokenizer.vocab_size}; {str(dtype).removeprefix('torch.')} on "
        f"{where}; peak lr {optim.peak_lr:.3g}")
    last_saved = str(resume_from) if resume_from else None

    def save(step: int, loader: dict | None = None) -> None:
        nonlocal last_saved
        if unread:  # the skipped-step count it saves covers every step taken
            read_steps(unread, guard, last_saved)
        train_state = {"step": step, "loader": loader or batches.state_dict(), "first_val_loss": first_val,
                       "skipped_steps": guard.skipped, "lr_schedule": {"peak_lr": optim.peak_lr,
                       "warmup_steps": optim.warmup_steps, "total_steps": optim.steps}}
        path = ckpt.save_training_state(checkpoints, step, wrapped, optimizer, tokenizer, model_config.to_dict(),
                                        train_state, {"train": config.to_dict()}, world, run.keep_checkpoints)
        last_saved = str(path)

    val_loss = evaluate_loss(eval_model, val_batch, device, dtype)
    first_val = val_loss if first_val is None else first_val
    if metrics and "val_loss" not in recorded_at_start:
        metrics.write({"step": start_step, "val_loss": val_loss})

    flops = train_flops_per_sample(model_config)
    peak_tflops = device_peak_tflops(device, run.peak_tflops, resolved["precision"])
    stream, trace = iter(batches), os.environ.get(TRACE_SAMPLES)
    bar = tqdm(range(start_step + 1, optim.steps + 1), disable=not (progress and world.is_main), desc="train",
               dynamic_ncols=True, initial=start_step, total=optim.steps)
    window, preempted, step, unread = Window(), False, start_step, []
    data_failure, data_failed = None, 0.0  # this rank's DataSourceFailed; any rank's (all-reduced)
    model.train()
    with PreemptionFlag() as sigterm:
        for step in bar:
            # --- the step's micro-batches, and the global token count that normalises the loss ---
            started = time.perf_counter()
            position = batches.snapshot()  # the data before this step: saved if the data source fails
            try:
                micro = [next(stream) for _ in range(accum)]
            except DataSourceFailed as err:
                micro, data_failure = [], err
            data_seconds = time.perf_counter() - started
            if trace:
                trace_samples(trace, step, micro, world)
            local = torch.tensor([sum(loss_tokens(b, tokenizer.pad_id) for b in micro), int(sigterm.raised),
                                  int(data_failure is not None)], dtype=torch.int64)
            global_tokens, stop, data_failed = all_reduce_host(local, world).tolist()
            if data_failed:  # on any rank: every rank saves the step before and stops
                if step - 1 > start_step:
                    save(step - 1, batches.state_dict(position))
                break
            token_scale = world.world_size / max(global_tokens, 1.0)

            set_lr(optimizer, optim.peak_lr * warmup_cosine(step - 1, optim.warmup_steps, optim.steps))
            nll_total = torch.zeros((), device=device, dtype=torch.float64)
            for i, batch in enumerate(micro):
                torch.manual_seed(micro_seed(run.seed, step, world.rank * accum + i))
                batch = to_device(batch, device, backend.pin_memory)
                images = normalize(batch["images"])
                with no_gradient_sync(wrapped, i < accum - 1):
                    with autocast(device, dtype):
                        out = wrapped(images, **model_inputs(batch, device))
                    objective(out, optim.caption_loss_weight, token_scale, accum).backward()
                nll_total += out["nll_sum"].detach().double()
                if step == start_step + 1 and i == 0 and int(out["num_tokens"]) != loss_tokens(batch, tokenizer.pad_id):
                    raise UserError(f"method {model_config.method!r} counts {int(out['num_tokens'])} loss tokens where the "
                                    f"loop counts {loss_tokens(batch, tokenizer.pad_id)}: its caption mask differs")
            # The loss and gradient norm stay on the device, read (read_steps) only on the steps that
            # report, evaluate, save or stop; a non-finite step's update is skipped without reading them.
            loss_t = all_reduce_sum(nll_total, world) / max(global_tokens, 1)
            norm_t = grad_norm(wrapped, device)
            finite = torch.isfinite(loss_t) & torch.isfinite(norm_t)
            if backend.fused_adamw:  # the fused update skips itself where found_inf is 1
                optimizer.found_inf = (~finite).float()
                optimizer.step()
            elif finite:  # a CPU reads it at no cost
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window.add(optim.batch_size, int(global_tokens), data_seconds)
            unread.append((step, loss_t, norm_t))
            reporting = step % run.log_every == 0 or step == optim.steps
            if reporting or stop or step % run.ckpt_every == 0 or step % config.eval.every == 0:
                loss, norm = read_steps(unread, guard, last_saved)

            if reporting:
                record = {"step": step, "loss": loss, "lr": optimizer.param_groups[0]["lr"], "grad_norm": norm,
                          **window.summary(flops, world.world_size, peak_tflops, device),
                          "skipped_steps": guard.skipped}
                if hasattr(batches, "bad_samples"):  # a loader that skips undecodable samples counts them
                    reasons = batches.bad_samples()
                    record["bad_samples"] = sum(reasons.values())
                    record.update({f"bad_samples/{reason}": count for reason, count in reasons.items()})
                if metrics:
                    metrics.write(record)
                # data_wait: the share of the time spent waiting for batches (a slow source shows here)
                bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{record['images_per_s']:.0f}",
                                data_wait=f"{record['data_wait']:.0%}")
                window.reset()
            if step % config.eval.every == 0 or step == optim.steps:
                val_loss = evaluate_loss(eval_model, val_batch, device, dtype)
                # Evaluations decode step by step outside forward(), which FSDP's hooks do not
                # cover: under FSDP they run on the consolidated checkpoint with `ov2 eval` instead.
                scores = (periodic_evals(eval_model, tokenizer, config, device, dtype)
                          if world.is_main and parallel != "fsdp" else {})
                if metrics:
                    metrics.write({"step": step, "val_loss": val_loss, **scores})
                if world.is_main:
                    shown = "".join(f", {k} {v:.3f}" for k, v in scores.items())
                    log(f"step {step}: held-out caption loss {val_loss:.3f}{shown}")
            if stop:
                save(step)
                preempted = True
                break
            # A step that was skipped is not saved (but the last step always is): the latest
            # checkpoint stays one whose last update was good.
            if (step % run.ckpt_every == 0 and guard.consecutive == 0) or step == optim.steps:
                save(step)
    bar.close()
    if metrics:
        metrics.close()

    summary = {"first_val_loss": first_val, "final_val_loss": val_loss, "captions": [], "truths": [],
               "step": step, "skipped_steps": guard.skipped, "checkpoint": last_saved}
    if data_failed:
        raise data_failure or DataSourceFailed("another rank's data source failed")
    if preempted:
        log(f"\nSIGTERM: stopped at step {step}; checkpoint {last_saved}; continue with --resume")
        return {**summary, "stopped": "preempted"}
    if world.is_main:
        shown = min(config.eval.show_captions, len(val_set))
        caption_model = unwrap(wrapped) if parallel != "fsdp" else export_model(model_config, last_saved, device)
        captions = greedy_caption(caption_model, tokenizer, val_batch["images"][:shown]) if shown else []
        print(f"\nheld-out caption loss: {first_val:.3f} at start -> {val_loss:.3f} after {optim.steps} steps")
        print(f"checkpoint: {last_saved}\n")
        for i, (predicted, truth) in enumerate(zip(captions, val_batch["texts"])):
            print(f"[held-out {i}] {predicted}\n{'':14s}(truth: {truth})")
        summary.update(captions=captions, truths=val_batch["texts"][:shown])
    barrier(world)
    return summary


def export_model(model_config, checkpoint: str, device) -> torch.nn.Module:
    """A plain (unsharded) model from a checkpoint's consolidated export."""
    from safetensors.torch import load_file

    from ..checkpoint import WEIGHTS
    from ..methods import build_model as build_from_model_config

    model = build_from_model_config(model_config, device="meta")
    model.load_state_dict(load_file(Path(checkpoint) / WEIGHTS, device=str(device)), assign=True)
    return model.eval()
