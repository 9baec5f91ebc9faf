"""Every export carries a model card (README.md) that a Hub page and a reader can use."""

import pytest
import yaml

from openvision2.interop import export_checkpoint
from interop_fixtures import tiny_checkpoint

LIBRARIES = {"timm": "timm", "hf": "transformers", "hf-clip": "transformers", "hf-siglip": "transformers",
             "open_clip": "open_clip", "decoder": "openvision2"}
OPTIONS = {"hf-clip": dict(pre_norm=True), "hf-siglip": dict(class_token=False)}


@pytest.mark.parametrize("fmt", list(LIBRARIES))
def test_every_export_has_a_model_card(tmp_path, fmt):
    tiny_checkpoint(tmp_path / "ckpt", **OPTIONS.get(fmt, {}))
    out = export_checkpoint(tmp_path / "ckpt", fmt, tmp_path / "export")
    text = (out / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    card = yaml.safe_load(front)
    assert card["library_name"] == LIBRARIES[fmt] and card["license"] == "apache-2.0"
    assert {"openvision2", "vision", LIBRARIES[fmt]} <= set(card["tags"])
    assert "32 x 32 (bilinear" in body and "(0.485, 0.456, 0.406)" in body and "(0.229, 0.224, 0.225)" in body
    assert "```python" in body and "export" in body  # a load snippet naming the export directory
    assert f"`{tmp_path / 'ckpt'}`" in body  # the source checkpoint


def test_repository_license_matches_pyproject():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    assert 'license = "Apache-2.0"' in (root / "pyproject.toml").read_text()
    text = (root / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
