"""Bad input never stops a run and is never silently lost: skipped, counted by reason, logged once per
reason per shard with its shard and key."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from openvision2.data.augment import EvalResize, TrainAugment
from openvision2.data.loader import ShardBatches
from openvision2.data.shards import ShardDataset
from openvision2.data.writer import ShardWriter
from openvision2.errors import UserError

from shard_fixtures import image_bytes, write_shards

SIZE = 16
GOOD = 6  # good samples around the bad ones in each shard


def png_of_size(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")  # compresses to a few kB: a decompression bomb
    return buffer.getvalue()


BAD_SAMPLES = {  # reason -> members of one bad sample
    "corrupt_image": {"jpg": image_bytes(0, (64, 64))[:300], "txt": "truncated jpeg"},
    "not_image": {"jpg": b"<html>not an image</html>", "txt": "html saved as jpg"},
    "missing_image": {"txt": "a caption without an image"},
    "missing_caption": {"jpg": image_bytes(1)},
    "empty_caption": {"jpg": image_bytes(2), "txt": "  \n "},
    "bad_text": {"jpg": image_bytes(3), "txt": b"caf\xe9 latin-1"},
    "too_many_pixels": {"png": png_of_size(3000, 2000), "txt": "bomb"},
}


def write_with_bad(directory, name: str, bad: dict[str, dict], repeat: int = 1) -> str:
    """GOOD good samples, then each bad sample `repeat` times, then GOOD more good samples."""
    with ShardWriter(directory, prefix=name, per_shard=1000) as writer:
        for i in range(GOOD):
            writer.write(f"good{i:03d}", {"jpg": image_bytes(i), "txt": f"good {i}"})
        for reason, members in bad.items():
            for r in range(repeat):
                writer.write(f"{reason.replace('_', '-')}{r}", members)
        for i in range(GOOD, 2 * GOOD):
            writer.write(f"good{i:03d}", {"jpg": image_bytes(i), "txt": f"good {i}"})
    return str(directory / f"{name}-000000.tar")


def read_all(paths, transform=None, **kwargs):
    dataset = ShardDataset(list(paths), transform or EvalResize(SIZE), shuffle=False, epochs=1, **kwargs)
    stream = dataset.open_slot(0, 1)
    samples = []
    while (sample := stream.next_sample()) is not None:
        samples.append(sample)
    return samples, stream.bad.as_dict()


@pytest.mark.parametrize("reason", sorted(BAD_SAMPLES))
def test_each_bad_sample_is_skipped_and_counted(tmp_path, reason, caplog):
    shard = write_with_bad(tmp_path, "bad", {reason: BAD_SAMPLES[reason]}, repeat=3)
    caplog.set_level(logging.WARNING, logger="openvision2.data")
    samples, counts = read_all([shard], TrainAugment(SIZE, max_pixels=1_000_000))
    assert [s["caption"] for s in samples] == [f"good {i}" for i in range(2 * GOOD)]
    assert counts == {reason: 3}
    # logged once for the shard (not three times), naming the shard and the key
    messages = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
    assert len(messages) == 1 and f"{shard}:{reason.replace('_', '-')}0" in messages[0]


def test_bad_json_and_a_json_without_the_caption_key(tmp_path):
    shard = write_with_bad(tmp_path, "json", {
        "bad_text": {"jpg": image_bytes(4), "json": b"{not json"},
        "missing_caption": {"jpg": image_bytes(5), "json": {"url": "http://x"}},
        "empty_caption": {"jpg": image_bytes(6), "json": {"re_caption": ["", " "]}},
    })
    with ShardWriter(tmp_path, prefix="recap", per_shard=10) as writer:
        writer.write("ok", {"jpg": image_bytes(7), "json": {"re_caption": "a recaptioned photo"}})
    samples, counts = read_all([shard, str(tmp_path / "recap-000000.tar")], caption_key="re_caption")
    assert [s["caption"] for s in samples] == ["a recaptioned photo"]  # the good ones have only txt
    assert counts == {"bad_text": 1, "missing_caption": 2 * GOOD + 1, "empty_caption": 1}


@pytest.mark.parametrize("into", [100, 512 + 100])  # a cut header, or cut image data
def test_truncated_tar_keeps_the_samples_before_the_cut(tmp_path, into):
    [shard] = write_shards(tmp_path, "t", num_shards=1, per_shard=10)
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[:data.index(b"t00006.jpg") + into])  # sample 6's image is cut
    samples, counts = read_all([shard])
    assert [s["key"] for s in samples] == [f"t{i:05d}" for i in range(6)]
    assert counts == {"truncated_tar": 1}


def test_unopenable_shards_are_reported_and_skipped(tmp_path, caplog):
    [good] = write_shards(tmp_path, "g", num_shards=1, per_shard=5)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    caplog.set_level(logging.WARNING, logger="openvision2.data")
    samples, counts = read_all([str(tmp_path / "missing.tar"), str(garbage), good, str(empty)])
    assert len(samples) == 5
    assert counts == {"unreadable_shard": 3}
    assert "missing.tar" in caplog.text and "garbage.tar" in caplog.text


def test_training_goes_on_through_bad_input_and_counts_reach_the_loader(tmp_path):
    shard = write_with_bad(tmp_path, "mixed", BAD_SAMPLES)  # 12 good + 7 bad positions per epoch

    def stream():
        return ShardBatches(ShardDataset([shard, str(tmp_path / "gone.tar")], TrainAugment(SIZE, max_pixels=1_000_000),
                                         batch_size=4, shuffle=False, shuffle_buffer=100), num_workers=1)

    batches = stream()
    for _ in range(10):  # 40 positions: two epochs and a bit; every bad position filled by a good sample
        batch = next(batches)
        assert batch["images"].shape == (4, 3, SIZE, SIZE)
        assert all(key.rsplit(":", 1)[1].startswith("good") for key in batch["keys"])
    counts = batches.bad_samples()
    # each bad position once per epoch; the missing shard (no count, so no position) once per run
    assert counts == {**{reason: 2 for reason in BAD_SAMPLES}, "unreadable_shard": 1}
    # the counters are part of the state: a resumed run keeps counting from there
    resumed = stream()
    resumed.load_state_dict(batches.state_dict())
    assert resumed.bad_samples() == counts


def test_a_source_without_any_usable_sample_stops_with_a_clear_error(tmp_path):
    shard = write_with_bad(tmp_path, "dead", {}, repeat=0)
    dataset = ShardDataset([shard], EvalResize(SIZE), caption_key="re_caption")  # no sample has one
    with pytest.raises(UserError, match="no usable sample"):
        next(iter(dataset.samples(0, 1)))


def test_gzipped_shards_are_read(tmp_path):
    import gzip

    [shard] = write_shards(tmp_path, "z", num_shards=1, per_shard=4)
    zipped = tmp_path / "z.tar.gz"
    zipped.write_bytes(gzip.compress(open(shard, "rb").read()))
    samples, counts = read_all([str(zipped)])
    assert [s["key"] for s in samples] == [f"z{i:05d}" for i in range(4)] and counts == {}


def test_a_fifo_named_tar_among_the_shards_is_skipped_not_waited_for(tmp_path):
    """A FIFO blocks its open and reads forever: only regular files are read as shards (or sizes.json)."""
    import os
    import signal

    write_shards(tmp_path, "s", num_shards=1, per_shard=4)
    os.mkfifo(tmp_path / "s-000001.tar")
    signal.alarm(60)  # a hang fails the test instead of stalling the suite
    try:
        samples, counts = read_all([str(tmp_path / "s-000000.tar"), str(tmp_path / "s-000001.tar")])
        assert len(samples) == 4 and counts == {"unreadable_shard": 1}
        batches = ShardBatches(ShardDataset(str(tmp_path), EvalResize(SIZE), batch_size=2))  # the directory
        assert len(next(batches)["keys"]) == 2
        assert batches.bad_samples() == {"unreadable_shard": 1}
        batches.close()
    finally:
        signal.alarm(0)
