"""The fake run: one training step of the model `ov2 train` builds for a config, on fake tensors, under
torch's memory tracker, at any world size, on a CPU (no GPU, next to no memory).

What runs is the real code: the method's model (train/factory.py), its masking and loss, the loop's
objective, activation checkpointing and FSDP2 wrapping from train/parallel.py (over torch's fake process
group, whose collectives do nothing), bf16 autocast with the FSDP2 mixed-precision policy, and AdamW as
train/optim.py builds it. Tensors are FakeTensors on device "cpu": shapes, dtypes and storage sizes are
real, no data is. A FakeTensor on "cuda" cannot run backward without a GPU (pytorch issue 92627), so the
step runs on "cpu" with CUDA's policies applied where the CPU's differ:
- CUDA autocast runs layer_norm, softmax and log_softmax in fp32; CPU autocast keeps them in bf16.
  While planning, fp32 wrappers for them are registered under the AutocastCPU key (cuda_autocast_policy).
- The caption loss takes its CUDA path (models/chunked_ce.py: every token, 4,096-token chunks), whose
  chunk body runs compiled there: its Triton kernels keep nothing but their outputs, so while planning
  the body is one that allocates exactly those outputs (the NLL and the chunk's gradient in the logits'
  dtype; cuda_loss_path). Where a nonzero() remains, its size depends on data a FakeTensor does not
  have: every position counts (full-length captions, the most a step can hold; worst_case_nonzero).
- torch 2.14's DTensor sharding propagation reuses the outer fake mode, so the tracker counts its
  global-shape scratch tensors as optimizer state (~13x too large): detect_fake_mode is made to return
  None there while planning (dtensor_propagation_fix, only on the torch versions that need it).
Plain meta tensors are not used: without a fake mode SDPA takes its math path and over-counts.

The optimizer state is created before the tracked step by one AdamW step on zero gradients (no forward,
no backward), so one tracked step is the steady state of every later step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..methods import build_model, get_method
from ..models.losses import objective
from ..precision import DTYPES
from ..preprocess import normalize
from ..train.config import TrainConfig
from ..train.optim import build_optimizer
from ..train.parallel import apply_activation_checkpointing, no_gradient_sync, parallelize, resolve_parallel

CPU = torch.device("cpu")
# torch versions whose DTensor sharding propagation reuses the outer fake mode (checked: 2.14.1)
PROPAGATION_FIX_VERSIONS = ("2.14.",)
# ops CUDA autocast runs in fp32 and CPU autocast does not (torch/csrc/autograd autocast_mode.cpp lists)
CUDA_FP32_OPS = ("layer_norm", "softmax.int", "log_softmax.int")
# a checkpointing mode of plans only: full checkpointing of the image tower's blocks alone (the released code)
ENCODER_ONLY = "encoder-full"


@dataclass(frozen=True)
class Tracked:
    """Per-device bytes at the tracked step's peak, by kind (torch's categories, merged)."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int  # what the forward keeps for backward, and the backward's temporaries
    inputs: int
    total: int


def plan_precision(precision: str) -> str:
    """precision=auto on a GPU of the table means bf16 (Ampere and later compute it natively)."""
    return "bf16" if precision == "auto" else precision


def model_config(config: TrainConfig):
    """The model section as training builds it, with the vocabulary the tokenizer will have."""
    return replace(config.model, vocab_size=config.data.expected_vocab_size)


def needs_propagation_fix(version: str = torch.__version__) -> bool:
    return version.startswith(PROPAGATION_FIX_VERSIONS)


@contextlib.contextmanager
def dtensor_propagation_fix(version: str = torch.__version__):
    """DTensor's sharding propagation under its own fake mode, so the tracker skips it (see above)."""
    if not needs_propagation_fix(version):
        yield
        return
    import torch.distributed.tensor._sharding_prop as propagation

    original = propagation.detect_fake_mode
    propagation.detect_fake_mode = lambda *args, **kwargs: None
    try:
        yield
    finally:
        propagation.detect_fake_mode = original


@contextlib.contextmanager
def cuda_autocast_policy():
    """Under CPU autocast, run the ops CUDA autocast keeps in fp32 in fp32 (their outputs too)."""
    library = torch.library.Library("aten", "IMPL")
    keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def fp32(op):
        def kernel(*args, **kwargs):
            with torch._C._ExcludeDispatchKeyGuard(keyset):
                cast = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
                if "dtype" in kwargs and kwargs["dtype"] is not None:
                    kwargs = {**kwargs, "dtype": torch.float32}
                return op(*cast, **kwargs)
        return kernel

    import warnings

    with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
        warnings.simplefilter("ignore")
        for name in CUDA_FP32_OPS:
            packet, _, overload = name.partition(".")
            op = getattr(getattr(torch.ops.aten, packet), overload or "default")
            library.impl(name, fp32(op), "AutocastCPU")
    try:
        yield
    finally:
        library._destroy()  # the CPU policy's own kernels are active again


def compiled_chunk_body_outputs(logits, targets, mask, need_grad):
    """What the compiled chunk body (chunked_ce.chunk_nll_and_grad under torch.compile) leaves in memory:
    the chunk's NLL and, for backward, its gradient in the logits' dtype. Memory only, no values."""
    nll = torch.zeros((), dtype=torch.float32, device=logits.device)
    return nll, (torch.empty_like(logits) if need_grad else None)


@contextlib.contextmanager
def cuda_loss_path():
    """The vocabulary loss as it runs on CUDA (static, 4,096-token chunks, compiled body), on the CPU."""
    from ..models import chunked_ce

    original = chunked_ce.loss_path
    static = chunked_ce.LossPath("static", chunked_ce.CUDA_CHUNK_TOKENS, compiled_chunk_body_outputs,
                                 "cuda, as planned: the compiled chunk body's outputs")
    chunked_ce.loss_path = lambda device, chunk_tokens=None: static
    try:
        yield
    finally:
        chunked_ce.loss_path = original


class worst_case_nonzero(TorchDispatchMode):
    """nonzero() of a fake tensor: one row per element (every caption position counted)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.nonzero.default:
            x = args[0]
            return torch.zeros((x.numel(), x.dim()), dtype=torch.long, device=x.device)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def fake_process_group(world_size: int):
    """torch's fake process group as the default group (collectives do nothing), and its CPU mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore  # importing registers backend "fake"

    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()


def fake_batch(model, micro_batch: int) -> dict[str, torch.Tensor]:
    """The batch of one micro-batch as the loop hands it over: uint8 images, caption ids, and the
    method's extra text fields (OpenVision 1's alt-text and sub-caption), full length."""
    cfg = model.config
    batch = {"images": torch.zeros(micro_batch, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8),
             "captions": torch.ones(micro_batch, cfg.text_len, dtype=torch.long)}
    for name in get_method(cfg.method).batch_fields:
        batch[name] = torch.ones(micro_batch, cfg.alt_text_len, dtype=torch.long)
    return batch


def tracked_steps(config: TrainConfig, world_size: int, micro_batches: tuple[int, ...],
                  checkpointing: str | None = None, accumulate: bool = False, fake: bool = True,
                  cuda: bool = True) -> list[Tracked]:
    """Per-device memory of one steady-state training step at each micro-batch (fake_steps)."""
    with fake_steps(config, world_size, checkpointing, accumulate, fake, cuda) as step:
        return [step(b) for b in micro_batches]


@contextlib.contextmanager
def fake_steps(config: TrainConfig, world_size: int, checkpointing: str | None = None, accumulate: bool = False,
               fake: bool = True, cuda: bool = True):
    """A function micro_batch -> Tracked: the per-device memory of one steady-state training step, as
    the config trains (its parallel strategy at world_size, its precision, its checkpointing unless one
    is given), on one model built once for every call. A step's time hardly depends on its micro-batch
    (no data is computed), so any micro-batch can be tried. accumulate: the step runs two micro-batches,
    the first without gradient sync, as the loop does with grad_accum >= 2 (the gradients of the first
    are held through the second). fake=False runs the same steps on real tensors (what the tests compare
    with). cuda=False plans the step as it runs on a CPU instead (CPU autocast policy, unfused AdamW),
    to compare with what `ov2 bench` measures here."""
    parallel = resolve_parallel(config.parallel.strategy, world_size)
    checkpointing = checkpointing or config.parallel.activation_checkpointing
    dtype = DTYPES[plan_precision(config.parallel.precision)]
    group = fake_process_group(world_size) if parallel == "fsdp" else contextlib.nullcontext()
    autocast_policy = cuda_autocast_policy() if cuda else contextlib.nullcontext()
    loss_path = cuda_loss_path() if cuda else contextlib.nullcontext()
    with dtensor_propagation_fix(), autocast_policy, loss_path, group:
        yield _built_step(config, parallel, dtype, checkpointing, accumulate, fake, cuda)


def _built_step(config, parallel, dtype, checkpointing, accumulate: bool, fake: bool, cuda: bool):
    from torch._subclasses.fake_tensor import FakeTensorMode

    optim = config.optim
    # Built and wrapped on the meta device as `meta_init=true` training does (building reads values,
    # e.g. timm's drop-path rates, which a FakeTensor does not have), then given (fake) storage.
    model = build_model(model_config(config), device="meta")
    if checkpointing == ENCODER_ONLY:  # the release's remat: every block of the image tower, nothing else
        apply_activation_checkpointing(model.encoder, "full")
        checkpointing = "none"
    wrapped = parallelize(model, "fsdp" if parallel == "fsdp" else "none", activation_checkpointing=checkpointing,
                          compile=False, param_dtype=dtype)
    tensors = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with tensors:
        model.to_empty(device=CPU)
        # fused, as training on CUDA builds it (train/backend.py): no per-parameter temporaries
        optimizer = build_optimizer(model, optim.peak_lr, optim.weight_decay, (optim.beta1, optim.beta2), optim.eps,
                                    fused=cuda)
        for p in model.parameters():  # AdamW's state, as after the first step
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # torch's MemTracker hooks every parameter's gradient and refuses a frozen one (OpenVision 2's
        # pooled-output LayerNorm, outside its loss): marked trainable after the optimizer was built,
        # it still gets no gradient and no state, as it takes no part in the loss.
        for p in model.parameters():
            p.requires_grad_(True)

    def step(micro_batch: int) -> Tracked:
        with tensors:
            return _one_step(config, wrapped, model, optimizer, parallel, dtype, micro_batch, accumulate,
                             fake and not cuda)

    return step


def _one_step(config, wrapped, model, optimizer, parallel, dtype, micro_batch: int, accumulate: bool,
              data_dependent: bool) -> Tracked:
    """The loop's step: per micro-batch normalise, forward under autocast, objective, backward (all
    but the last without gradient sync); then AdamW. data_dependent: fake tensors meet the CPU loss
    path's nonzero() (the CUDA path has none)."""
    batch = fake_batch(model, micro_batch)
    tracker = _tracker(wrapped, optimizer, parallel, batch)
    micro_batches = 2 if accumulate else 1
    with tracker, worst_case_nonzero() if data_dependent else contextlib.nullcontext():
        for i in range(micro_batches):
            tracker.reset_mod_stats()  # per-module statistics per forward (the peak is kept)
            with no_gradient_sync(wrapped, i < micro_batches - 1):
                images = normalize(batch["images"])
                with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                    out = wrapped(images, **{k: v for k, v in batch.items() if k != "images"})
                objective(out, config.optim.caption_loss_weight, 1.0, micro_batches).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return _breakdown(tracker.get_tracker_snapshot("peak").get(CPU, {}))


def _tracker(wrapped, optimizer, parallel: str, batch: dict):
    if parallel == "fsdp":
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

        tracker = _global_peak_only(FSDPMemTracker)(mod=wrapped, optm=optimizer)
        tracker.track_inputs(tuple(batch.values()))
        return tracker
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = _global_peak_only(MemTracker)()
    tracker.track_external(wrapped, optimizer, *batch.values())
    return tracker


def _global_peak_only(tracker_class):
    """The tracker without its per-module peaks, which the plan never reads: after every op torch's
    tracker walks every module it has seen (and, through weak references, each checkpoint wrapper's
    __getattr__), ~45% of a large model's planning time. The device's peak snapshot is kept
    exactly as torch keeps it (tests/test_plan.py: fake = real)."""
    if not hasattr(tracker_class, "_update_peak_stats"):  # another torch: its own, slower bookkeeping
        return tracker_class

    class GlobalPeakOnly(tracker_class):
        def _update_peak_stats(self, peak_state) -> None:
            for device, snapshot in self._curr_mem_snap.items():
                if self._peak_mem.get(device, 0) < snapshot["Total"]:
                    self._peak_mem[device] = snapshot["Total"]
                    self._peak_mem_snap[device] = dict(snapshot)

    return GlobalPeakOnly


def _breakdown(snapshot: dict) -> Tracked:
    by_name = {(k.value if hasattr(k, "value") else str(k)).lower(): v for k, v in snapshot.items()}

    def total(*names: str) -> int:
        return sum(by_name.get(name.lower(), 0) for name in names)

    return Tracked(parameters=total("Sharded Param", "Unsharded Param", "Parameter", "Buffer"),
                   gradients=total("Sharded Grad", "Unsharded Grad", "Gradient"),
                   optimizer=total("Optstate"),
                   activations=total("Activation", "Temp", "All Gather", "Reduce Scatter", "Other"),
                   inputs=total("Inputs"),
                   total=total("Total"))


def loss_bytes(config: TrainConfig, micro_batch: int) -> int:
    """The caption loss's own memory at one micro-batch (the vocabulary head and cross-entropy of
    models/losses.py on the decoder's output), tracked alone: its peak less its inputs (the hidden
    states and the head) and the head's gradient. `ov2 plan` shows it apart from the activations."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from ..models.losses import caption_nll
    from ..models.registry import decoder_size

    cfg = model_config(config)
    width = decoder_size(cfg.decoder).width
    dtype = DTYPES[plan_precision(config.parallel.precision)]
    positions = cfg.text_len if get_method(cfg.method).has_text_encoder else cfg.text_len - 1
    with cuda_autocast_policy(), cuda_loss_path(), FakeTensorMode():
        head = torch.nn.Linear(width, cfg.vocab_size, bias=False)
        hidden = torch.zeros(micro_batch, positions, width, dtype=dtype, requires_grad=True)
        targets = torch.ones(micro_batch, positions, dtype=torch.long)
        mask = torch.ones(micro_batch, positions, dtype=torch.bool)
        tracker = MemTracker()
        tracker.track_external(head, hidden)
        with tracker, worst_case_nonzero():
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                out = caption_nll(hidden, head, targets, mask, cfg.logits_chunk)
            out["nll_sum"].backward()
        peak = tracker.get_tracker_snapshot("peak").get(CPU, {})
        inputs = hidden.numel() * hidden.element_size() + 2 * head.weight.numel() * head.weight.element_size()
        return max(0, _breakdown(peak).total - inputs)
