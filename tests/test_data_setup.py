"""Data setups that would run but measure nothing: OpenVision 1 without a distinct alt-text (DESIGN.md §6),
and the paper recipes on the embedded dataset (DESIGN.md §4.1)."""

from __future__ import annotations

import pytest

from openvision2.cli import main
from openvision2.data.augment import EvalResize
from openvision2.data.shards import ShardDataset
from openvision2.data.writer import ShardWriter
from openvision2.errors import UserError
from openvision2.train.config import TrainConfig
from openvision2.train.loop import check_data
from openvision2.train.recipes import RECIPES, get_recipe

from shard_fixtures import image_bytes


def test_samples_without_the_alt_text_are_bad_samples_not_the_caption(tmp_path):
    with ShardWriter(tmp_path, prefix="s", per_shard=100) as writer:
        writer.write("a", {"jpg": image_bytes(0), "json": {"re_caption": "long a", "org_caption": "alt a"}})
        writer.write("b", {"jpg": image_bytes(1), "json": {"re_caption": "long b"}})
        writer.write("c", {"jpg": image_bytes(2), "json": {"re_caption": "long c", "org_caption": "  "}})
    dataset = ShardDataset(str(tmp_path), EvalResize(16), caption_key="re_caption", alt_caption_key="org_caption",
                           shuffle=False, epochs=1)
    stream = dataset.open_slot(0, 1)
    samples = []
    while (sample := stream.next_sample()) is not None:
        samples.append(sample)
    assert [(s["caption"], s["alt_text"]) for s in samples] == [("long a", "alt a")]
    assert stream.bad.as_dict() == {"missing_alt_text": 2}


@pytest.mark.parametrize("alt_key", ["", "re_caption"])
def test_openvision1_on_shards_needs_a_distinct_alt_text_key(tmp_path, alt_key, capsys):
    config = TrainConfig(method="openvision1", dataset="shards", caption_key="re_caption", alt_caption_key=alt_key)
    with pytest.raises(UserError, match="alt_caption_key"):
        check_data(config)
    check_data(TrainConfig(method="openvision1", dataset="shards", caption_key="re_caption",
                           alt_caption_key="org_caption"))
    check_data(TrainConfig(method="openvision2", dataset="shards", caption_key="re_caption"))
    # through the command: one line, exit status 2, before any data is read
    assert main(["train", "--preset", "tiny-cpu-ov1", "--out", str(tmp_path / "run"), "dataset=shards",
                 f"train_shards={tmp_path}/none.tar", "caption_key=re_caption", f"alt_caption_key={alt_key}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "alt_caption_key" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", sorted(n for n in RECIPES if n != "tiny-cpu"))
def test_paper_recipes_carry_the_paper_data_setup(name):
    for stage in get_recipe(name):
        config = stage.config
        assert config.dataset == "shards" and config.shuffle_buffer == 250_000
        assert config.caption_key == "llava_llama3_condition_True_dense_weighted_topk"
        assert config.allow_embedded is False
        with pytest.raises(UserError, match="allow_embedded=true"):
            check_data(TrainConfig(**{**config.to_dict(), "dataset": "synthetic"}))
        check_data(TrainConfig(**{**config.to_dict(), "dataset": "synthetic", "allow_embedded": True}))
