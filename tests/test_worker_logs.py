"""Issue 24 item 23: a skipped sample is named once per run, however many DataLoader workers meet it
(each worker reads every shard in some epoch, and each had its own 'already named' set)."""

from __future__ import annotations

from openvision2.data.writer import ShardWriter
from openvision2.train.loop import train
from scaleout_helpers import tiny_config
from shard_fixtures import image_bytes, write_shards


def test_a_bad_sample_is_named_once_with_several_workers(tmp_path, capfd):
    with ShardWriter(tmp_path / "train", prefix="t", per_shard=8) as writer:
        for i in range(32):
            writer.write(f"t{i:05d}", {"jpg": b"not an image" if i == 3 else image_bytes(i), "txt": f"caption {i}"})
    write_shards(tmp_path / "val", "v", num_shards=1, per_shard=8, start=1000)
    config = tiny_config(dataset="shards", train_shards=f"{tmp_path}/train/t-{{000000..000003}}.tar",
                         val_shards=f"{tmp_path}/val/v-000000.tar", num_workers=2, steps=16, evals="",
                         shuffle_buffer=8)  # 128 samples: four epochs over both workers
    capfd.readouterr()
    train(config, tmp_path / "run", progress=False)
    printed = capfd.readouterr()
    named = [line for line in (printed.out + printed.err).splitlines() if "t00003" in line]
    assert len(named) == 1 and "(not_image)" in named[0], named
