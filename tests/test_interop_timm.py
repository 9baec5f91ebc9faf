"""timm export: loaded with timm's own calls, compared with timm's own forward pass."""

import json

import pytest
import timm
import torch

from openvision2.cli import main
from openvision2.commands import export as export_command
from openvision2.errors import UserError
from openvision2.interop import FORMATS, export_checkpoint

from interop_fixtures import IMAGE_SIZE, TOL, images, max_diff, tiny_checkpoint


@pytest.mark.parametrize("options", [{}, {"pre_norm": True}, {"class_token": False}],
                         ids=["paper", "pre_norm", "no_cls"])
def test_timm_local_dir_matches_our_encoder(tmp_path, options):
    model, _ = tiny_checkpoint(tmp_path / "ckpt", **options)
    out = export_checkpoint(tmp_path / "ckpt", "timm", tmp_path / "timm")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    tower = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = images()
    with torch.no_grad():
        pooled, tokens = model.encoder.forward_tokens(x)
        assert max_diff(tower(x), pooled) <= TOL
        assert max_diff(tower.forward_features(x)[:, tower.num_prefix_tokens:], tokens) <= TOL
    assert tower.num_prefix_tokens == (0 if options.get("class_token") is False else 1)

    # preprocessing travels in the pretrained_cfg, the way timm's data pipeline reads it
    data = timm.data.resolve_data_config({}, model=tower)
    assert data["input_size"] == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert data["interpolation"] == "bilinear" and data["crop_pct"] == 1.0
    assert tuple(data["mean"]) == (0.485, 0.456, 0.406) and tuple(data["std"]) == (0.229, 0.224, 0.225)


def test_timm_file_overlay_with_model_args(tmp_path):
    """The other documented way: a registered architecture + the saved model_args + the weights file."""
    model, _ = tiny_checkpoint(tmp_path / "ckpt")
    out = export_checkpoint(tmp_path / "ckpt", "timm", tmp_path / "timm")
    config = json.loads((out / "config.json").read_text())
    tower = timm.create_model(config["architecture"], pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
                              **config["model_args"]).eval()
    x = images()
    with torch.no_grad():
        assert max_diff(tower.forward_features(x)[:, 1:], model.encoder.forward_tokens(x)[1]) <= TOL


def test_export_cli_json_and_refusals(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt")
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "timm",
                 "--out", str(tmp_path / "t"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == ["README.md", "config.json", "model.safetensors"]
    # a non-empty --out is refused as one line, and leaves the directory alone
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "timm",
                 "--out", str(tmp_path / "t")]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown export format"):
        export_checkpoint(tmp_path / "ckpt", "onnx", tmp_path / "o")
    assert export_command.FORMATS == FORMATS


def test_training_options_reach_the_model():
    """pre_norm / class_token are TrainConfig keys (ov2 train key=value) passed to the encoder."""
    from openvision2.models import OpenVision2
    from openvision2.train.config import TrainConfig, apply_overrides

    config = apply_overrides(TrainConfig(encoder="mu/8", decoder="mu", image_size=32),
                             ["pre_norm=true", "class_token=false"])
    model = OpenVision2(config.model_config(vocab_size=48, pad_id=0))
    assert model.encoder.cls_token is None and not isinstance(model.encoder.norm_pre, torch.nn.Identity)
    x = images()
    pooled, tokens = model.encoder.forward_tokens(x)
    assert tokens.shape == (2, (IMAGE_SIZE // 8) ** 2, 32) and pooled.shape == (2, 32)
    default = OpenVision2(TrainConfig(encoder="mu/8", decoder="mu", image_size=32).model_config(48, 0))
    assert default.encoder.cls_token is not None and isinstance(default.encoder.norm_pre, torch.nn.Identity)


def test_timm_config_does_not_claim_the_base_architecture_weights(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt")
    out = export_checkpoint(tmp_path / "ckpt", "timm", tmp_path / "timm")
    pretrained_cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert pretrained_cfg["tag"] == "openvision2" and "license" not in pretrained_cfg
    assert timm.create_model(f"local-dir:{out}", pretrained=True).pretrained_cfg["tag"] == "openvision2"
