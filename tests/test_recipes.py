"""The resolution curriculum: the paper's stage numbers (DESIGN.md §4.3), and the CPU recipe end to end."""

from __future__ import annotations

import json

import pytest
import torch

from openvision2.checkpoint import load_checkpoint, resolve_checkpoint
from openvision2.data.build import CaptionCollate, fixed_batch
from openvision2.data.synthetic import SyntheticCaptions
from openvision2.errors import UserError
from openvision2.train.loop import evaluate_loss
from openvision2.train.recipes import RECIPES, get_recipe, run_recipe


def test_paper_stages_match_spec():
    pretrain, finetune, highres = get_recipe("l14-336")
    assert (pretrain.config.image_size, finetune.config.image_size, highres.config.image_size) == (84, 224, 336)
    assert (pretrain.config.batch_size, pretrain.config.steps, pretrain.config.warmup_steps) == (32768, 390_981, 1_563)
    assert (finetune.config.batch_size, finetune.config.steps, finetune.config.warmup_steps) == (16384, 62_556, 1_563)
    assert (highres.config.batch_size, highres.config.steps, highres.config.warmup_steps) == (8192, 31_278, 0)
    assert pretrain.config.peak_lr == pytest.approx(1.024e-3)
    assert finetune.config.peak_lr == pytest.approx(2.56e-5)
    assert highres.config.peak_lr == pytest.approx(3.2e-6)
    for stage in (pretrain, finetune, highres):
        assert (stage.config.encoder, stage.config.decoder, stage.config.keep_ratio) == ("L/14", "L", 0.35)
    assert get_recipe("so400m14-384")[-1].config.image_size == 384
    assert get_recipe("so400m14-384")[0].config.decoder == "So400m"
    assert get_recipe("g14")[0].config.encoder == "g/14" and get_recipe("g14")[0].config.meta_init
    assert {"l14", "so400m14-384", "h14", "g14", "tiny-cpu"} <= set(RECIPES)
    with pytest.raises(UserError, match="unknown recipe"):
        get_recipe("nope")


def test_cpu_recipe_runs_both_stages_and_chains_weights(tmp_path):
    low, high = get_recipe("tiny-cpu")
    assert low.config.image_size < high.config.image_size
    overrides = ["encoder=mu/8", "decoder=mu", "text_len=32", "bpe_vocab_size=128", "train_samples=64",
                 "val_samples=8", "batch_size=8", "num_workers=0", "precision=fp32", "log_every=1",
                 "show_captions=1", "tensorboard=false", "ckpt_every=1000"]
    summaries = run_recipe("tiny-cpu", tmp_path, overrides, steps=3, progress=False)
    assert len(summaries) == 2 and all(s["step"] == 3 for s in summaries)
    first, second = tmp_path / f"stage-{low.name}", tmp_path / f"stage-{high.name}"

    # Stage 2 starts from stage 1's final weights: its step-0 held-out loss is that of stage 1's
    # export evaluated on stage 2's (larger) images.
    model, tokenizer, meta = load_checkpoint(first)
    assert meta["model"]["image_size"] == low.config.image_size
    val = fixed_batch(SyntheticCaptions(8, split="val", image_size=high.config.image_size),
                      CaptionCollate(tokenizer, 32), 8)
    expected = evaluate_loss(model, val, torch.device("cpu"), torch.float32)
    records = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"step": 0, "val_loss": pytest.approx(expected, rel=1e-6)}
    assert json.loads((second / "config.json").read_text())["run"]["init_from"] == str(first)
    # A fresh optimizer and schedule: stage 2's first step runs at LR 0 (warmup from 0), as stage 1's did.
    assert [r["lr"] for r in records if "lr" in r][0] == 0.0

    # The run directory points at the last stage's export; running the recipe again does nothing.
    assert resolve_checkpoint(tmp_path).resolve().parent.parent == second.resolve()
    assert run_recipe("tiny-cpu", tmp_path, overrides, steps=3, progress=False) == []
