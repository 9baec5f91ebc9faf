"""A transformers LlavaForConditionalGeneration around an exported encoder, as a downstream user builds it.

The encoder goes through `ov2 export` (hf, hf-clip or hf-siglip: whichever class computes exactly
what it computes) and is loaded back with AutoModel / AutoImageProcessor; the projector is LLaVA's
own 2-layer GELU MLP; the language model is either a local Hugging Face causal LM directory or a
small Llama initialised from a config with a word-level vocabulary learned from the instruction data.

Tokens fed to the LM: "patch" (LLaVA's default: the last block's patch tokens, CLS dropped) or
"pooled" (one token, OpenVision's pooled feature: the tower's final norm on the mean patch token).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..interop.loading import load_failure

IMAGE_TOKEN = "<image>"
TOKEN_CHOICES = ("patch", "pooled")
TINY_LM = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, max_position_embeddings=256)


def export_tower(model, meta: dict, directory: Path) -> tuple[str, str]:
    """Write the encoder as the transformers class that expresses it; (export format, LLaVA select strategy)."""
    from ..interop.export import write_export

    encoder = model.encoder
    class_token = getattr(encoder, "cls_token", None) is not None
    pre_norm = not isinstance(getattr(encoder, "norm_pre", nn.Identity()), nn.Identity)
    fmt = "hf-siglip" if not class_token else "hf-clip" if pre_norm else "hf"
    write_export(model, None, meta, fmt, directory)
    return fmt, "default" if class_token else "full"


def _final_norm(tower: nn.Module) -> nn.Module:
    for name in ("layernorm", "post_layernorm", "vision_model.post_layernorm"):
        module = tower.get_submodule(name) if _has(tower, name) else None
        if module is not None:
            return module
    raise UserError(f"{type(tower).__name__} has no final LayerNorm to pool with: use --tokens patch")


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


class PooledTower(nn.Module):
    """Wraps a transformers vision tower so that its last hidden state is the single pooled token
    (final norm of the mean patch token), which LLaVA's "full" strategy then feeds whole."""

    def __init__(self, tower: nn.Module, has_cls: bool):
        super().__init__()
        self.tower, self.has_cls, self.norm = tower, has_cls, _final_norm(tower)
        self.config = tower.config

    @property
    def dtype(self):
        return self.tower.dtype

    def forward(self, pixel_values, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        kwargs.update(output_hidden_states=True, return_dict=True)
        out = self.tower(pixel_values, **kwargs)
        last = out.hidden_states[-1]
        pooled = self.norm((last[:, 1:] if self.has_cls else last).mean(dim=1, keepdim=True))
        return BaseModelOutputWithPooling(last_hidden_state=pooled, pooler_output=pooled[:, 0],
                                          hidden_states=(*out.hidden_states[:-1], pooled))


def word_tokenizer(texts: list[str]):
    """A word-level tokenizer (whitespace and punctuation split) over `texts`, as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", IMAGE_TOKEN]
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]", additional_special_tokens=[IMAGE_TOKEN])


def _language_model(lm: str, texts: list[str], seed: int):
    """(causal LM, tokenizer with the image token) for --lm tiny or a local directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if lm == "tiny":
        tokenizer = word_tokenizer(texts)
        config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **TINY_LM)
        torch.manual_seed(seed)
        return LlamaForCausalLM(config), tokenizer
    path = Path(lm)
    if not (path / "config.json").is_file():
        raise UserError(f"--lm {lm}: not 'tiny' nor a local Hugging Face model directory (no config.json there)")
    tokenizer = _load_part(lambda: AutoTokenizer.from_pretrained(path), path, "tokenizer")
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer in {path} has no end-of-sequence token: answers could not end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    model = _load_part(lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), path, "causal LM")
    model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def _load_part(load, path: Path, what: str):
    """transformers' loaders raise many kinds of errors with multi-line texts: one line naming the part
    (a pickle that needs code is refused by torch's weights_only loading before anything runs)."""
    try:
        return load()
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, pickle.UnpicklingError) as err:
        raise UserError(f"--lm {path}: cannot load its {what} ({load_failure(err)}): pass a complete Hugging Face "
                        "causal LM directory (config, safetensors weights, tokenizer)") from None


def build_llava(tower_dir: Path, strategy: str, tokens: str, lm: str, texts: list[str], seed: int = 0):
    """(LlavaForConditionalGeneration, tokenizer, image processor, image tokens per image)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, LlavaConfig, LlavaForConditionalGeneration

    if tokens not in TOKEN_CHOICES:
        raise UserError(f"unknown --tokens {tokens!r}: use one of {', '.join(TOKEN_CHOICES)}")
    language_model, tokenizer = _language_model(lm, texts, seed)
    vision_config = AutoConfig.from_pretrained(tower_dir)
    has_cls = strategy == "default"
    config = LlavaConfig(vision_config=vision_config, text_config=language_model.config,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-1,
                         vision_feature_select_strategy="full" if tokens == "pooled" else strategy,
                         projector_hidden_act="gelu")
    with torch.device("meta"):  # every part is replaced below: build none of them twice
        llava = LlavaForConditionalGeneration(config)
    torch.manual_seed(seed + 1)
    llava.model.multi_modal_projector = type(llava.model.multi_modal_projector)(config)  # LLaVA's own MLP
    tower = AutoModel.from_pretrained(tower_dir).eval().requires_grad_(False)
    llava.model.vision_tower = PooledTower(tower, has_cls) if tokens == "pooled" else tower
    llava.model.language_model = language_model.model
    llava.lm_head = language_model.lm_head
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return llava, tokenizer, AutoImageProcessor.from_pretrained(tower_dir), 1 if tokens == "pooled" else patches
