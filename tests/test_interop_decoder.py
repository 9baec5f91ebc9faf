"""The decoder export: captions with it over a timm-loaded encoder equal the checkpoint's own."""

import json

import pytest
import timm
import torch

from openvision2.data.synthetic import SyntheticCaptions
from openvision2.errors import UserError
from openvision2.generate import greedy_caption
from openvision2.interop import export_checkpoint, import_open_clip, load_captioner, load_decoder

from interop_fixtures import IMAGE_SIZE, tiny_checkpoint


def test_decoder_export_captions_over_a_timm_tower(tmp_path):
    model, tokenizer = tiny_checkpoint(tmp_path / "ckpt")
    decoder_dir = export_checkpoint(tmp_path / "ckpt", "decoder", tmp_path / "decoder")
    timm_dir = export_checkpoint(tmp_path / "ckpt", "timm", tmp_path / "timm")
    config = json.loads((decoder_dir / "decoder_config.json").read_text())
    assert config["preprocess"]["size"] == IMAGE_SIZE and config["vision_width"] == 32

    decoder, _, _ = load_decoder(decoder_dir)
    for key, value in model.decoder.state_dict().items():
        assert torch.equal(decoder.state_dict()[key], value), key

    tower = timm.create_model(f"local-dir:{timm_dir}", pretrained=True)
    captioner, loaded_tokenizer = load_captioner(decoder_dir, tower)
    data = SyntheticCaptions(3, split="val", image_size=IMAGE_SIZE)
    batch = torch.stack([data[i]["image"] for i in range(3)])
    with torch.no_grad():
        theirs = greedy_caption(captioner, loaded_tokenizer, batch)
    assert theirs == greedy_caption(model, tokenizer, batch)
    assert all(isinstance(text, str) for text in theirs)


def test_decoder_export_refused_for_an_encoder_only_checkpoint(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt")
    export_checkpoint(tmp_path / "ckpt", "open_clip", tmp_path / "oc")
    import_open_clip(tmp_path / "oc", tmp_path / "imported")
    with pytest.raises(UserError, match="no decoder"):
        export_checkpoint(tmp_path / "imported", "decoder", tmp_path / "dec")
