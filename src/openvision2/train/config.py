"""The training configuration: one flat dataclass, filled by a named preset and `key=value` overrides."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields

from ..errors import UserError
from ..models import ModelConfig
from ..models.openvision2 import EVAL_KEEP_DEFAULT


@dataclass
class TrainConfig:
    # --- model (DESIGN.md §1-3) ---
    method: str = "openvision2"
    encoder: str = "L/14"
    decoder: str = "L"
    image_size: int = 224
    keep_ratio: float = 0.35
    eval_keep_ratio: float = EVAL_KEEP_DEFAULT  # visual tokens at evaluation; 0 = keep_ratio (ModelConfig)
    decoder_mask: str = "causal"
    text_pos: str = "none"
    text_len: int = 128
    # encoder options beyond the paper: pre_norm=true for an HF CLIPVisionModel (LLaVA-1.5) export,
    # class_token=false for a SiglipVisionModel export (`ov2 export --format hf-clip|hf-siglip`)
    pre_norm: bool = False
    class_token: bool = True
    # --- baselines: method=openvision1 (DESIGN.md §6) and method=cappa (DESIGN.md §5.3, §10.1) ---
    text_encoder: str = ""  # OpenVision 1's text encoder size; empty = the decoder's size
    alt_text_len: int = 80  # OpenVision 1's alt-text / sub-caption length, [CLS] included
    max_logit_scale: float = 0.0  # OpenVision 1's temperature: 0 = unclamped as released; 100 = CLIP's clamp
    parallel_prob: float = 0.0  # CapPa: share of examples predicted in parallel from [MASK] inputs
    # --- tokenizer: "wordpiece" (OpenVision's BERT ids, 32k head) or "bpe" (trained on the captions) ---
    tokenizer: str = "wordpiece"
    tokenizer_path: str = ""  # a BERT vocab.txt / tokenizer.json; empty = the bundled one
    bpe_vocab_size: int = 256
    # --- data ---
    dataset: str = "synthetic"
    train_samples: int = 100_000  # size of the embedded dataset's train split
    val_samples: int = 256  # held-out images for the validation loss and the printed captions
    num_workers: int = 1
    # --- WebDataset shards (dataset=shards; `ov2 shards` writes them; data/shards.py) ---
    train_shards: str = ""  # "data/train-{000000..000099}.tar", a directory, or weighted "a-{0..9}.tar@0.7;b.tar@0.3"
    val_shards: str = ""  # held-out shards: the first val_samples of them, in order, resized
    caption_key: str = "txt"  # a member (txt) or a json key (re_caption); a list field gives one caption per visit
    # the alt-text for methods that use one (e.g. org_caption); method=openvision1 on shards needs it,
    # distinct from caption_key, and skips samples without it (bad-sample reason missing_alt_text)
    alt_caption_key: str = ""
    shuffle_buffer: int = 10_000  # samples shuffled together (DESIGN.md §4.1 uses 250 000)
    allow_embedded: bool = True  # the paper recipes set false: they refuse the embedded dataset unless asked
    sample_with_replacement: bool = False  # draw shards at random instead of epoch permutations
    max_image_pixels: int = 89_478_485  # larger images are skipped as decompression bombs (PIL's limit)
    # --- optimisation (DESIGN.md §4.4, §4.5) ---
    batch_size: int = 256
    steps: int = 1000
    warmup_steps: int = 100
    base_lr: float = 8e-6  # peak LR = base_lr * batch_size / 256
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    caption_loss_weight: float = 2.0  # the release scales the loss by 2; reported losses are unscaled
    precision: str = "auto"  # "auto": bf16 autocast where bf16 matmuls are fast, else fp32; or "bf16"/"fp32"
    seed: int = 0
    # --- bookkeeping ---
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    show_captions: int = 8  # held-out images printed with their captions at the end
    # --- evaluations every eval_every steps and at the end (eval/periodic.py run_evals) ---
    evals: str = "zeroshot,captions"  # comma list of zeroshot, captions, probe; empty = none
    eval_images: int = 256  # held-out images per evaluation (probes train on twice as many)
    eval_task: str = ""  # zero-shot/probe task; empty = the dataset's (synthetic-object); or fashion-mnist
    eval_shards: str = ""  # Fashion-MNIST shard directory for eval_task=fashion-mnist; empty = val_shards' directory
    # --- scale-out (torchrun): wrapping, accumulation, initialisation, faults ---
    parallel: str = "auto"  # "auto" (ddp with >1 rank, else none), "none", "ddp" or "fsdp" (FSDP2 per block)
    grad_accum: int = 1  # micro-batches per step and rank; batch_size stays the global batch
    activation_checkpointing: str = "none"  # "none", "full" or "selective" (keeps matmul outputs), per block
    compile: bool = False  # torch.compile each transformer block
    meta_init: bool = False  # build on the meta device, shard, then initialise (1B+ models under FSDP)
    init_from: str = ""  # checkpoint or run directory whose weights start this run (next curriculum stage)
    max_bad_steps: int = 20  # consecutive steps with a NaN/inf loss or gradient before the run stops
    peak_tflops: float = 0.0  # per-device peak for MFU; 0 = known GPUs only
    tensorboard: bool = True  # also log to out/tensorboard

    @property
    def peak_lr(self) -> float:
        return self.base_lr * self.batch_size / 256

    def model_config(self, vocab_size: int, pad_id: int) -> ModelConfig:
        return ModelConfig(encoder=self.encoder, decoder=self.decoder, image_size=self.image_size,
                           keep_ratio=self.keep_ratio, eval_keep_ratio=self.eval_keep_ratio,
                           decoder_mask=self.decoder_mask, text_pos=self.text_pos,
                           vocab_size=vocab_size, text_len=self.text_len, pad_id=pad_id,
                           pre_norm=self.pre_norm, class_token=self.class_token)

    def to_dict(self) -> dict:
        return asdict(self)


def _parse_value(key: str, text: str, kind: type):
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"override {key}={text}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        name = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise UserError(f"override {key}={text}: expected {name}") from None


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` strings, checking that each key exists and each value has the field's type."""
    types = {f.name: {"int": int, "float": float, "bool": bool, "str": str}[f.type] for f in fields(config)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} is not of the form key=value")
        if key not in types:
            close = difflib.get_close_matches(key, types, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `ov2 train --list-keys` shows them"
            raise UserError(f"unknown override key {key!r}{hint}")
        setattr(config, key, _parse_value(key, value, types[key]))
    return config
