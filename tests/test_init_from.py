"""init_from an encoder-only checkpoint (issue 12 §4): an open_clip-layout release, imported with
`ov2 import`, starts a run's encoder; the decoder starts fresh and the tokenizer comes from the config."""

import pytest
import torch

import openvision2.train.loop as loop
from openvision2.checkpoint import load_encoder
from openvision2.cli import main

from interop_fixtures import tiny_checkpoint
from test_interop_open_clip import release_tower, write_release

TI14 = dict(image_size=112, patch_size=14, width=192, layers=12, head_width=64)  # "Ti/14" @ 112 px
RUN = ["steps=1", "batch_size=2", "val_samples=2", "train_samples=64", "bpe_vocab_size=64", "log_every=1",
       "eval_every=1000", "ckpt_every=1000", "warmup_steps=1", "decoder=mu", "evals=",
       "eval_images=2", "tensorboard=false"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    cfg = dict(__import__("test_interop_open_clip").RELEASE_VISION_CFG, **TI14)
    write_release(root / "release", release_tower(proj="linear", **TI14), vision_cfg=cfg)
    assert main(["import", "--from", str(root / "release"), "--out", str(root / "imported")]) == 0
    return root / "imported"


def test_train_starts_from_an_imported_open_clip_encoder(imported, tmp_path, monkeypatch, capsys):
    """The weights entering the first step are the imported ones; the resolution change is announced."""
    seen = {}
    build_optimizer = loop.build_optimizer

    def capture(model, *args, **kwargs):  # called once the model is initialised, before any step
        seen.update({k: v.detach().clone() for k, v in model.encoder.state_dict().items()})
        return build_optimizer(model, *args, **kwargs)

    monkeypatch.setattr(loop, "build_optimizer", capture)
    argv = ["train", "--preset", "tiny-cpu", "--out", str(tmp_path / "run"), "--no-progress",
            "encoder=Ti/14", "image_size=56", f"init_from={imported}", *RUN]
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert "open_clip import" in log and "loaded the encoder" in log and "decoder starts fresh" in log
    assert "tokenizer from this run's config (bpe)" in log
    assert "resolution 112 -> 56 px" in log and "sin-cos" in log
    encoder, meta = load_encoder(imported)
    expected = encoder.state_dict()
    assert seen.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(seen[key], value, rtol=0, atol=0, msg=key)
    trained, _ = load_encoder(tmp_path / "run")
    assert trained.pos_embed is None  # the table is computed per grid, never stored


def test_shape_mismatch_is_one_line(imported, tmp_path, capsys):
    argv = ["train", "--preset", "tiny-cpu", "--out", str(tmp_path / "run"), "--no-progress",
            "encoder=S/14", "image_size=56", f"init_from={imported}", *RUN]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot initialise the encoder" in err
    assert "[192" in err and "[384" in err and "Ti/14 @ 112 px there, S/14 @ 56 px here" in err


def test_a_full_checkpoint_still_restores_every_weight(tmp_path, capsys):
    model, _ = tiny_checkpoint(tmp_path / "full")
    argv = ["train", "--preset", "tiny-cpu", "--out", str(tmp_path / "run"), "--no-progress", "encoder=mu/8",
            "image_size=32", "text_len=12", f"init_from={tmp_path / 'full'}",
            *RUN]
    assert main(argv) == 0
    assert "loaded every weight (encoder, decoder) and its tokenizer" in capsys.readouterr().out


@pytest.mark.parametrize("fmt,kind", [("timm", "timm export"), ("hf", "hf export")])
def test_init_from_a_timm_or_hf_export(tmp_path, capsys, fmt, kind):
    from openvision2.interop import export_checkpoint

    model, _ = tiny_checkpoint(tmp_path / "full")
    export_checkpoint(tmp_path / "full", fmt, tmp_path / fmt)
    argv = ["train", "--preset", "tiny-cpu", "--out", str(tmp_path / "run"), "--no-progress", "encoder=mu/8",
            "image_size=32", f"init_from={tmp_path / fmt}", *RUN]
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert f"({kind}): loaded the encoder" in log and "resolution" not in log
