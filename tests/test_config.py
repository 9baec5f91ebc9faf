"""The sectioned training config: dotted keys and the old flat keys, --list-keys, up-front range
checks (one line, exit 2) driven by each field's metadata, old flat config.json files, the method
registry's entry points."""

import json
import math
from dataclasses import fields

import pytest

import openvision2
from openvision2.cli import main
from openvision2.errors import UserError
from openvision2.train.config import DOTTED_KEYS, FLAT_KEYS, SECTIONS, TrainConfig, apply_overrides

# Every key `ov2 train --list-keys` printed before the config had sections: each stays an override.
FLAT_NAMES = """method encoder decoder image_size keep_ratio decoder_mask text_pos text_len pre_norm class_token
text_encoder alt_text_len parallel_prob tokenizer tokenizer_path bpe_vocab_size dataset train_samples val_samples
num_workers train_shards val_shards caption_key alt_caption_key shuffle_buffer sample_with_replacement
max_image_pixels batch_size steps warmup_steps base_lr weight_decay beta1 beta2 eps caption_loss_weight precision
seed log_every eval_every ckpt_every keep_checkpoints show_captions evals eval_images eval_task eval_shards
parallel grad_accum activation_checkpointing compile meta_init init_from max_bad_steps peak_tflops
tensorboard""".split()

# The checks the issue names, pinned by value (the generated cases below cover every other range).
BAD = ["base_lr=inf", "base_lr=nan", "base_lr=0", "caption_loss_weight=nan", "caption_loss_weight=-1",
       "beta1=1", "beta1=-0.1", "beta2=1.5", "eps=0", "num_workers=-1", "warmup_steps=-1", "weight_decay=-0.1",
       "bpe_vocab_size=0", "keep_ratio=0", "keep_ratio=1.5", "steps=0", "batch_size=0", "image_size=0",
       "text_len=2", "train_samples=0", "eval_every=0", "grad_accum=-1", "micro_batch=0",
       "micro_batch=x", "micro_batch=2.5", "peak_tflops=inf", "parallel_prob=2",
       "dataset=imagenet", "tokenizer=sentencepiece", "precision=fp16", "parallel=tp", "decoder_mask=full",
       "method=clip", "evals=bleu", "model.keep_ratio=0", "optim.eps=-1"]


def _generated_bad_values() -> list[str]:
    """For every field with a declared range: a value just outside each end, and inf / nan for floats."""
    cases = []
    for key, (_, f) in DOTTED_KEYS.items():
        meta, kind = f.metadata, f.type
        if kind not in ("int", "float"):
            continue
        if meta["low"] is not None:
            cases.append(f"{key}={meta['low'] if meta['low_open'] else meta['low'] - 1}")
        if meta["high"] is not None:
            cases.append(f"{key}={meta['high'] if meta['high_open'] else meta['high'] + 1}")
        if kind == "float":
            cases += [f"{key}=inf", f"{key}=-inf", f"{key}=nan"]
    return cases


@pytest.mark.parametrize("override", BAD + _generated_bad_values())
def test_every_bad_value_is_one_line_and_exit_2(override, tmp_path, capsys):
    capsys.readouterr()
    argv = ["train", "--out", str(tmp_path / "r"), "--steps", "1", "--no-progress", "encoder=mu/8", "decoder=mu",
            "image_size=32", "text_len=24", "train_samples=64", "val_samples=8", "batch_size=8", "num_workers=0",
            "evals=", "show_captions=0", "tensorboard=false", override]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("ov2 train: error: ")
    key = override.partition("=")[0].rpartition(".")[2]
    named = {key, getattr(FLAT_KEYS.get(key, DOTTED_KEYS.get(override.partition("=")[0], (None, None)))[1],
                          "name", key)}
    assert any(name in err for name in named), err
    assert not (tmp_path / "r").exists()  # refused before anything was built or written


def test_the_generated_cases_cover_every_range():
    cases = _generated_bad_values()
    assert "optim.beta1=1.0" in cases and "optim.base_lr=0.0" in cases and "data.num_workers=-1" in cases
    assert "model.keep_ratio=0.0" in cases and "model.keep_ratio=2.0" in cases
    assert len(cases) > 60


def test_dotted_and_flat_keys_set_the_same_field():
    assert set(FLAT_NAMES) <= set(FLAT_KEYS)
    config = apply_overrides(TrainConfig(), ["model.keep_ratio=0.25", "eval_every=7", "parallel=fsdp",
                                             "optim.base_lr=1e-3", "data.num_workers=0"])
    assert config.model.keep_ratio == 0.25 == config.keep_ratio
    assert config.eval.every == 7 == config.eval_every
    assert config.parallel.strategy == "fsdp" and config.optim.base_lr == 1e-3 and config.num_workers == 0
    for name in FLAT_NAMES:  # every old key accepts its current value back
        section, f = FLAT_KEYS[name]
        value = getattr(getattr(config, section), f.name)
        apply_overrides(config, [f"{name}={str(value).lower() if isinstance(value, bool) else value}"])
    with pytest.raises(UserError, match="set from the tokenizer"):
        apply_overrides(TrainConfig(), ["model.vocab_size=5"])
    with pytest.raises(UserError, match="did you mean model.keep_ratio"):
        apply_overrides(TrainConfig(), ["model.keep_ration=0.3"])


def test_list_keys_prints_each_field_with_meaning_and_default(capsys):
    assert main(["train", "--list-keys"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(lines) == len(DOTTED_KEYS)
    keep = next(line for line in lines if line.startswith("model.keep_ratio="))
    assert keep.startswith("model.keep_ratio=0.35") and "default 0.35" in keep and "alias keep_ratio" in keep
    assert "fraction of the encoder's output tokens" in keep and "in (0, 1]" in keep
    for (section, f) in DOTTED_KEYS.values():
        assert f.metadata["help"], f"{section}.{f.name} has no meaning"


def test_sections_hold_each_field_once():
    names = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]
    assert len(names) == len(set(names))
    assert {s for s, _ in DOTTED_KEYS.values()} == set(SECTIONS)


def test_old_flat_config_json_loads(tmp_path):
    old = {"method": "openvision1", "encoder": "S/16", "eval_every": 40, "parallel": "ddp", "base_lr": 2e-4,
           "removed_key": 1}
    config = TrainConfig.from_dict(old)
    assert (config.model.method, config.model.encoder, config.eval.every) == ("openvision1", "S/16", 40)
    assert config.parallel.strategy == "ddp" and config.optim.base_lr == 2e-4
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_old_checkpoint_without_a_method_loads_and_captions(tmp_path, capsys):
    """A checkpoint whose config.json model section predates recorded methods is OpenVision 2's."""
    import numpy as np
    from PIL import Image

    from openvision2.checkpoint import load_checkpoint, save_checkpoint
    from openvision2.data.synthetic import SyntheticCaptions
    from openvision2.tokenizer import CaptionTokenizer

    tokenizer = CaptionTokenizer.train_bpe(SyntheticCaptions(200).captions(), 64)
    model = openvision2.create_model("mu/8", decoder="mu", image_size=32, text_len=12,
                                     vocab_size=tokenizer.vocab_size)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    old_fields = ("encoder", "decoder", "image_size", "keep_ratio", "decoder_mask", "text_pos", "vocab_size",
                  "text_len", "pad_id", "pre_norm", "class_token")
    meta["model"] = {k: meta["model"][k] for k in old_fields}
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded).__name__ == "OpenVision2" and loaded.config.method == "openvision2"
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    assert main(["caption", "--checkpoint", str(tmp_path / "ckpt"), str(image)]) == 0


@pytest.mark.parametrize("method, kind", [("openvision2", "OpenVision2"), ("openvision1", "OpenVision1"),
                                          ("cappa", "CapPa")])
def test_create_model_takes_a_method(method, kind):
    model = openvision2.create_model("mu/8", method=method, decoder="mu", image_size=32, vocab_size=50,
                                     text_len=12, alt_text_len=8)
    assert type(model).__name__ == kind and model.config.method == method
    if method == "cappa":
        assert model.config.keep_ratio == 1.0  # the registry's fixed field


def test_eval_does_not_import_train():
    from pathlib import Path

    for path in (Path(openvision2.__file__).parent / "eval").glob("*.py"):
        text = path.read_text()
        assert "from ..train" not in text and "openvision2.train" not in text, path.name


def test_non_finite_message_is_plain():
    from openvision2.options import check_value

    with pytest.raises(UserError, match="base_lr must be a finite number, got inf"):
        check_value("base_lr", math.inf, {"low": 0.0})
