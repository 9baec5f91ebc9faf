"""`ov2 flops`: the paper's FLOPs/image (DESIGN.md §5.1) within 3%, parameter counts of the family
(DESIGN.md §1.1), and the analytic count against what torch counts when the model runs."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from openvision2.cli import main
from openvision2.flops import PUBLISHED_GFLOPS, default_decoder, encoder_count
from openvision2.methods import count_flops
from openvision2.models import ModelConfig, OpenVision2, create_encoder
from openvision2.models.cappa import CapPa, CapPaConfig
from openvision2.models.openvision1 import OpenVision1, OpenVision1Config


@pytest.mark.parametrize("key", list(PUBLISHED_GFLOPS))
def test_reproduces_the_papers_flops_per_image_within_3_percent(key):
    method, encoder, res = key
    gflops = count_flops(ModelConfig(method=method, encoder=encoder, decoder=default_decoder(encoder), image_size=res)).total_flops / 1e9
    assert abs(gflops / PUBLISHED_GFLOPS[key] - 1) < 0.03, (key, gflops)


def test_published_figures_and_assumed_decoders_are_the_specs():
    assert PUBLISHED_GFLOPS == {("openvision2", "L/14", 224): 208.90, ("openvision1", "L/14", 224): 271.75,
                                ("openvision2", "So400m/14", 384): 1017.74,
                                ("openvision1", "So400m/14", 384): 1636.75}
    assert default_decoder("L/14") == "L" and default_decoder("So400m/14") == "So400m"


def test_spec_worked_example_parts():
    """DESIGN.md §5.4: OV2-L/14@224 = encoder 162.0 + decoder 38.4 + projection 0.14 + head 6.24."""
    parts = count_flops(ModelConfig(method="openvision2", encoder="L/14", decoder="L", image_size=224)).flops
    assert parts["encoder"] / 1e9 == pytest.approx(162.0, abs=0.1)
    assert parts["decoder"] / 1e9 == pytest.approx(38.4 + 0.14, abs=0.1)
    assert parts["vocab_head"] / 1e9 == pytest.approx(6.24, abs=0.01)


# DESIGN.md §1.1 published encoder sizes (millions): Ti 5-6, S 22, B 86, L 304, So400m 400-412, H 632, g 1010.
@pytest.mark.parametrize("encoder, low, high", [("Ti/16", 5.0, 6.0), ("S/16", 21.5, 22.5), ("B/16", 85.5, 86.5),
                                                ("L/14", 302.0, 305.0), ("So400m/14", 400.0, 413.0),
                                                ("H/14", 630.0, 633.0), ("g/14", 1005.0, 1015.0)])
def test_encoder_parameter_counts_match_the_family(encoder, low, high):
    analytic = encoder_count(encoder, 224)[1]
    built = sum(p.numel() for p in create_encoder(encoder, 224, device="meta").parameters())
    assert analytic == built
    assert low <= analytic / 1e6 <= high


@pytest.mark.parametrize("method", ["openvision2", "openvision1"])
def test_full_size_parameter_counts_equal_the_built_models(method):
    model = (OpenVision2(ModelConfig(), device="meta") if method == "openvision2"
             else OpenVision1(OpenVision1Config(), device="meta"))
    assert count_flops(ModelConfig(method=method, encoder="L/14", decoder="L", image_size=224)).total_params == sum(p.numel() for p in model.parameters())


def _tiny(method):
    # full logits: the chunked loss (the default) skips the masked-out targets, fewer FLOPs than counted
    kw = dict(encoder="mu/8", decoder="mu", image_size=32, vocab_size=60, text_len=12, logits_chunk=0)
    if method == "openvision2":
        return OpenVision2(ModelConfig(**kw)), ModelConfig(method=method, **kw), 1
    if method == "cappa":
        return (CapPa(CapPaConfig(**kw, text_pos="learned")),
                ModelConfig(method=method, **kw, text_pos="learned"), 1)
    return (OpenVision1(OpenVision1Config(**kw, text_encoder="mu", alt_text_len=8)),
            ModelConfig(method=method, **kw, alt_text_len=8), 2)


@pytest.mark.parametrize("method", ["openvision2", "cappa", "openvision1"])
def test_analytic_count_equals_torchs_flop_counter(method):
    """The model's real forward, counted by torch (math attention, so attention is counted too), is
    the analytic figure; OpenVision 1 adds only its B x B contrastive logits."""
    model, shape, text_passes = _tiny(method)
    model.train()
    batch = 2
    inputs = [torch.randn(batch, 3, 32, 32), torch.randint(3, 60, (batch, 12))]
    if method == "openvision1":
        inputs += [torch.randint(3, 60, (batch, 8)), torch.randint(3, 60, (batch, 8))]
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model(*inputs)
    expected = count_flops(shape, text_passes)
    assert expected.total_params == sum(p.numel() for p in model.parameters())
    contrastive = 2 * 2 * (2 * batch * batch * 32) if method == "openvision1" else 0  # 2 sets x 2 directions
    assert counter.get_total_flops() == batch * expected.total_flops + contrastive


def test_cli_json_and_text(capsys):
    assert main(["flops", "--model", "L/14", "--res", "224", "--method", "openvision1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gflops_per_image"] == pytest.approx(271.75, rel=0.03)
    assert out["params"] == sum(out["params_per_part"].values()) > 500e6
    assert out["decoder"] == "L" and out["decoder_assumed"] is True
    assert set(out["gflops_per_part"]) == {"encoder", "text_encoder", "decoder", "vocab_head"}
    from openvision2.train.presets import get_preset

    preset = get_preset("tiny-cpu-cappa")
    assert main(["flops", "--preset", "tiny-cpu-cappa"]) == 0
    text = capsys.readouterr().out
    assert f"cappa {preset.encoder} @ {preset.image_size}px" in text and "keep ratio 1," in text


def test_cli_rejects_bad_input(capsys):
    assert main(["flops", "--model", "Q/3"]) != 0
    assert "unknown encoder" in capsys.readouterr().err
    assert main(["flops", "--method", "clip"]) != 0
    assert "unknown method" in capsys.readouterr().err
