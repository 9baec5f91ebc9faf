"""The design's numbers, ids and shapes (docs/DESIGN.md), each against a literal written here, never
against the code's own constants: a change to any of them in the code fails a test.

Initialisations are checked statistically on tensors of 10^4..10^6 values (tolerance a few %)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from openvision2.bench.methods import CAPTION_LOSS_WEIGHT
from openvision2.models import ModelConfig, OpenVision2, create_encoder
from openvision2.models.decoder import CAUSAL, CaptionDecoder, attention_mask
from openvision2.models.openvision1 import OpenVision1, OpenVision1Config
from openvision2.models.registry import DECODER_SIZES, Size, paper_decoder
from openvision2.flops import default_decoder
from openvision2.preprocess import normalize
from openvision2.train.config import FLAT_KEYS, TrainConfig
from openvision2.train.recipes import RECIPES, get_recipe


def close(value: float, expected: float, rel: float = 0.03) -> bool:
    return abs(value - expected) <= rel * expected


# --- the ViT (DESIGN.md §1.2) -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_encoder("S/16", img_size=32)  # width 384, MLP 1536, 16 px patches


def test_vit_initialisation(vit):
    assert close(vit.cls_token.std().item(), 1e-6, rel=0.1)
    # patch conv: Flax kaiming_uniform = U(+-sqrt(6 / fan_in)), fan_in = 3 * 16 * 16 = 768 -> 0.08839
    patch = vit.patch_embed.proj.weight
    assert patch.shape == (384, 3, 16, 16) and vit.patch_embed.proj.bias is None
    assert patch.abs().max().item() <= 0.08839 and patch.abs().max().item() > 0.0880
    assert close(patch.std().item(), 0.08839 / math.sqrt(3), rel=0.005)
    block = vit.blocks[0]
    for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc1):
        assert close(linear.weight.std().item(), 0.02)
        assert linear.bias.abs().max().item() == 0.0
    # fc2: variance_scaling(0.3072, fan_out, truncated normal): std sqrt(0.3072 / 384) = 0.028284, cut at 2 std
    fc2 = block.mlp.fc2.weight
    assert close(fc2.std().item(), 0.028284, rel=0.005)  # 590k values: the estimate is good to 0.1%
    assert fc2.abs().max().item() <= 2 * 0.028284 / 0.8796 + 1e-6


def test_vit_activation_norms_and_pooling(vit):
    block = vit.blocks[0]
    assert isinstance(block.mlp.act, torch.nn.GELU) and block.mlp.act.approximate == "none"  # exact GELU
    assert all(m.eps == 1e-6 for m in vit.modules() if isinstance(m, torch.nn.LayerNorm))
    assert block.attn.qkv.bias is not None and block.attn.proj.bias is not None
    assert isinstance(vit.norm_pre, torch.nn.Identity) and isinstance(vit.norm, torch.nn.Identity)


def test_imagenet_normalisation():
    white, black = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), torch.zeros((1, 3, 1, 1), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected_white = torch.tensor([(1 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    expected_black = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    assert torch.allclose(normalize(white), expected_white, atol=1e-5)
    assert torch.allclose(normalize(black), expected_black, atol=1e-5)


# --- the OV2 decoder (DESIGN.md §2) -----------------------------------------------------------------

def test_decoder_size_table():
    expected = {"Ti": (192, 12, 3, 768), "S": (384, 12, 6, 1536), "M": (512, 12, 8, 2048), "B": (512, 12, 8, 2048),
                "L": (768, 12, 12, 3072), "H": (1024, 24, 16, 4096), "G": (1664, 48, 16, 8192),
                "So400m": (1152, 27, 16, 4304)}
    for name, shape in expected.items():
        assert DECODER_SIZES[name] == Size(*shape), name
    assert "g" not in DECODER_SIZES  # text_decoder_v2 has no 'g' key


def test_decoders_assumed_per_encoder_agree_between_recipes_and_flops():
    expected = {"L/14": "L", "So400m/14": "So400m", "H/14": "H", "g/14": "H"}
    for encoder, decoder in expected.items():
        assert paper_decoder(encoder) == decoder and default_decoder(encoder) == decoder
    for name in RECIPES:
        for stage in get_recipe(name):
            assert stage.config.decoder == default_decoder(stage.config.encoder), name


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    # the nano decoder (128 wide, 2 deep): the out/fc2 init must still use depth 12
    return CaptionDecoder(DECODER_SIZES["nano"], vision_width=384, vocab_size=32000, max_text_len=127)


def test_decoder_initialisation(decoder):
    assert close(decoder.token_embed.weight.std().item(), 0.02)
    assert close(decoder.visual_proj.weight.std().item(), 384 ** -0.5) and decoder.visual_proj.bias is None
    assert close(decoder.head.weight.std().item(), 128 ** -0.5) and decoder.head.bias is None
    block = decoder.blocks[1]
    assert close(block.qkv.weight.std().item(), 128 ** -0.5)  # q, k, v: width^-0.5
    assert close(block.proj.weight.std().item(), 128 ** -0.5 * 24 ** -0.5)  # out: width^-0.5 (2*12)^-0.5
    assert close(block.fc1.weight.std().item(), 256 ** -0.5)  # fc: (2 width)^-0.5
    assert close(block.fc2.weight.std().item(), 128 ** -0.5 * 24 ** -0.5)
    for linear in (block.qkv, block.proj, block.fc1, block.fc2):
        assert linear.bias.abs().max().item() == 0.0
    assert decoder.text_pos is None  # no position embedding, as released
    assert all(m.eps == 1e-6 for m in decoder.modules() if isinstance(m, torch.nn.LayerNorm))


def _mlp_activation(block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fc1's output, fc2's input) of the module's own forward pass, captured with hooks."""
    seen = {}
    hooks = [block.fc1.register_forward_hook(lambda m, i, o: seen.setdefault("fc1", o)),
             block.fc2.register_forward_pre_hook(lambda m, i: seen.setdefault("fc2", i[0]))]
    block(x, None)
    for hook in hooks:
        hook.remove()
    return seen["fc1"], seen["fc2"]


def test_decoder_and_text_encoder_use_tanh_gelu(decoder):
    text_encoder = OpenVision1(OpenVision1Config(encoder="mu/8", text_encoder="mu", decoder="mu", image_size=16,
                                                 vocab_size=50, text_len=8, alt_text_len=6)).text_encoder
    for block in (decoder.blocks[0], text_encoder.blocks[0]):
        x = 3 * torch.randn(4, 5, block.fc1.in_features)
        with torch.no_grad():
            hidden, activated = _mlp_activation(block, x)
        assert torch.allclose(activated, 0.5 * hidden * (1 + torch.tanh(0.7978845608 * (hidden + 0.044715 * hidden ** 3))),
                              atol=1e-5)
        assert not torch.allclose(activated, F.gelu(hidden), atol=1e-5)  # not the exact (erf) GELU


def test_default_decoder_mask_is_causal_over_visual_and_text():
    config = ModelConfig(encoder="mu/8", decoder="mu", image_size=16, vocab_size=20, text_len=4)
    assert config.decoder_mask == "causal" and TrainConfig().decoder_mask == "causal"
    model = OpenVision2(config).eval()
    seen = []
    model.decoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 16, 16), torch.tensor([[1, 5, 2, 3]]))
    # The plain causal mask reaches attention as SDPA's is_causal (models/decoder.py CAUSAL), which is
    # this mask: 4 patches -> floor(4 * 0.35) = 1 visual token, then 3 text inputs.
    assert seen[0] == CAUSAL
    assert attention_mask(1, 3, "causal").tolist() == [[True, False, False, False],
                                                       [True, True, False, False],
                                                       [True, True, True, False],
                                                       [True, True, True, True]]
    x = torch.randn(1, 4, model.decoder.width)
    with torch.no_grad():
        block = model.decoder.blocks[0]
        assert torch.allclose(block(x, CAUSAL), block(x, attention_mask(1, 3, "causal")), atol=1e-6)


# --- training (DESIGN.md §3.4, §4.4) ------------------------------------------------------------------

def _optimizer_defaults(config: TrainConfig) -> tuple:
    return config.beta1, config.beta2, config.eps, config.weight_decay


def test_optimizer_and_loss_weight_defaults():
    config = TrainConfig()
    assert _optimizer_defaults(config) == (0.9, 0.95, 1e-8, 0.2)
    assert config.caption_loss_weight == 2.0 and CAPTION_LOSS_WEIGHT == 2.0
    assert config.keep_ratio == 0.35 and config.text_len == 128
    # no gradient clipping to switch on: the only "clip" key is OpenVision 1's contrastive weight (1)
    assert [key for key in FLAT_KEYS if "clip" in key] == ["clip_loss_weight"]
    assert OpenVision1Config().clip_loss_weight == 1.0


@pytest.mark.parametrize("name", sorted(n for n in RECIPES if n != "tiny-cpu"))
def test_paper_recipes_use_the_released_optimizer(name):
    for stage in get_recipe(name):
        assert _optimizer_defaults(stage.config) == (0.9, 0.95, 1e-8, 0.2)
        assert stage.config.caption_loss_weight == 2.0 and stage.config.keep_ratio == 0.35


def test_adamw_gets_betas_eps_and_decay_from_the_config(tmp_path):
    """The optimizer a training run builds (checked on its checkpointed state)."""
    from openvision2.train.optim import build_optimizer

    model = OpenVision2(ModelConfig(encoder="mu/8", decoder="mu", image_size=16, vocab_size=20, text_len=4))
    config = TrainConfig()
    optimizer = build_optimizer(model, 1e-3, config.weight_decay, (config.beta1, config.beta2), config.eps)
    decayed, other = optimizer.param_groups
    assert (decayed["betas"], decayed["eps"], decayed["weight_decay"], other["weight_decay"]) == ((0.9, 0.95), 1e-8, 0.2, 0.0)


# --- OpenVision 1 (DESIGN.md §6) -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ov1():
    torch.manual_seed(0)
    config = OpenVision1Config(encoder="S/16", text_encoder="nano", decoder="nano", image_size=32, vocab_size=32000,
                               text_len=128, alt_text_len=80)
    return OpenVision1(config)


def test_openvision1_initialisation(ov1):
    assert close(ov1.decoder.queries.std().item(), 1.0) and ov1.decoder.queries.shape == (128, 128)
    text = ov1.text_encoder
    assert close(text.pos_embed.std().item(), 0.01) and text.pos_embed.shape == (80, 128)
    assert close(text.token_embed.weight.std().item(), 0.02)
    block = text.blocks[1]  # the decoder's block initialisation (text_transformer), depth 12 hard-wired
    assert close(block.qkv.weight.std().item(), 128 ** -0.5)
    assert close(block.proj.weight.std().item(), 128 ** -0.5 * 24 ** -0.5)
    assert close(block.fc1.weight.std().item(), 256 ** -0.5)
    assert close(block.fc2.weight.std().item(), 128 ** -0.5 * 24 ** -0.5)
    assert close(text.proj.weight.std().item(), 128 ** -0.5) and text.proj.bias is None
    assert close(ov1.image_head.weight.std().item(), 384 ** -0.5) and ov1.image_head.bias is None
    assert ov1.logit_scale.item() == pytest.approx(math.log(1 / 0.07)) == pytest.approx(2.65926)
    assert ov1.config.max_logit_scale == 0.0  # the temperature is not clamped, as released


def test_openvision1_query_decoder_applies_the_prefix_mask():
    model = OpenVision1(OpenVision1Config(encoder="mu/8", text_encoder="mu", decoder="mu", image_size=16,
                                          vocab_size=20, text_len=3, alt_text_len=3)).eval()
    seen = []
    model.decoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    ids = torch.tensor([[1, 5, 2]])
    with torch.no_grad():
        model.caption_logits(model.encode_image(torch.randn(1, 3, 16, 16))[1], ids)
    # prefix: 4 patches + 2 alt-text tokens, bidirectional and blind to the queries; 3 causal queries
    p, q = [True] * 6, [False] * 3
    assert seen[0].tolist() == [p + q] * 6 + [p + [True, False, False], p + [True, True, False], p + [True] * 3]


def test_openvision1_contrastive_loss_averages_its_two_text_sets():
    torch.manual_seed(0)
    model = OpenVision1(OpenVision1Config(encoder="mu/8", text_encoder="mu", decoder="mu", image_size=16,
                                          vocab_size=20, text_len=6, alt_text_len=5)).eval()
    images = torch.randn(3, 3, 16, 16)
    captions = torch.randint(3, 20, (3, 6))
    alt, sub = torch.randint(3, 20, (3, 5)), torch.randint(3, 20, (3, 5))
    with torch.no_grad():
        out = model(images, captions, alt, sub)
        image = F.normalize(model.image_head(model.encode_image(images)[0]), dim=-1)
        scale = model.logit_scale.exp()
        labels = torch.arange(3)

        def clip(texts):
            text = F.normalize(model.text_encoder(texts)[0], dim=-1)
            logits = scale * image @ text.T
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

        assert out["contrastive_loss"].item() == pytest.approx((clip(alt) + clip(sub)).item() / 2, rel=1e-5)
