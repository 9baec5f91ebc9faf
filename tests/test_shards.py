"""The shard reader: full coverage of an epoch, disjoint rank/worker splits, exact resume, mixing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openvision2.data.augment import EvalResize, TrainAugment
from openvision2.data.loader import ShardBatches
from openvision2.data.shards import ShardDataset, parse_sources
from openvision2.errors import UserError

from shard_fixtures import write_shards

SIZE = 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """6 shards x 10 samples."""
    return write_shards(tmp_path_factory.mktemp("shards"), "s", num_shards=6, per_shard=10)


def keys(samples) -> list[str]:
    return [s["key"] for s in samples]


def test_brace_expansion_directories_and_weights(shards, tmp_path):
    directory = shards[0].rsplit("/", 1)[0]
    assert parse_sources(f"{directory}/s-{{000000..000005}}.tar")[0].shards == tuple(shards)
    assert parse_sources(directory)[0].shards == tuple(shards)
    mixed = parse_sources(f"{shards[0]}::{shards[1]}@3;{shards[2]}")
    assert [(len(s.shards), s.weight) for s in mixed] == [(2, 3.0), (1, 1.0)]
    with pytest.raises(UserError):
        parse_sources(f"{shards[0]}@-1")
    with pytest.raises(UserError):
        parse_sources(str(tmp_path))  # a directory without shards


def test_one_epoch_visits_every_sample_once(shards):
    ordered = ShardDataset(shards, EvalResize(SIZE), shuffle=False, epochs=1)
    shuffled = ShardDataset(shards, EvalResize(SIZE), shuffle=True, shuffle_buffer=25, epochs=1, seed=3)
    in_order, mixed = keys(ordered.samples(0, 1)), keys(shuffled.samples(0, 1))
    assert in_order == [f"s{i:05d}" for i in range(60)]
    assert sorted(mixed) == in_order and mixed != in_order
    # a buffer of 25 samples mixes 3 shards (30 samples) at a time: the first 30 come from 3 shards
    assert len({k[:-1] for k in mixed[:30]}) > 1
    assert len({int(k[1:]) // 10 for k in mixed[:30]}) == 3


def test_epochs_reshuffle_and_captions_match(shards):
    stream = ShardDataset(parse_sources(";".join(shards[:1])), EvalResize(SIZE), shuffle=True, seed=0).samples(0, 1)
    first, second = [next(stream) for _ in range(10)], [next(stream) for _ in range(10)]
    assert sorted(keys(first)) == sorted(keys(second)) and keys(first) != keys(second)
    for sample in first:
        assert sample["caption"] == f"caption {int(sample['key'][1:])}"
        assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.uint8


@pytest.mark.parametrize("num_shards", [6, 2])  # 2 shards < 4 slots: the split is by sample
def test_rank_and_worker_slots_are_disjoint_and_cover_an_epoch(shards, num_shards):
    dataset = ShardDataset(shards[:num_shards], EvalResize(SIZE), shuffle=True, shuffle_buffer=15, epochs=1)
    parts = [keys(dataset.samples(slot, 4)) for slot in range(4)]  # 2 ranks x 2 workers
    union = [k for part in parts for k in part]
    assert len(union) == len(set(union)) == 10 * num_shards
    assert all(parts)


def test_ranks_and_workers_read_disjoint_slices_of_each_global_batch(shards):
    seen = {}
    for rank in range(2):  # global batch 10 = 2 ranks x 5; 2 workers per rank take turns
        dataset = ShardDataset(shards[:4], EvalResize(SIZE), shuffle=True, batch_size=5, rank=rank, world_size=2,
                               seed=1)
        batches = ShardBatches(dataset, num_workers=2)
        for _ in range(4):  # one epoch of the 40 samples
            batch = next(batches)
            assert batch["images"].shape == (5, 3, SIZE, SIZE)
            for key in batch["keys"]:
                seen.setdefault(key, set()).add(rank)
        assert batches.state_dict()["position"] == 4
        batches.close()
    assert len(seen) == 40 and all(len(ranks) == 1 for ranks in seen.values())


def _train_dataset(shards, **kwargs) -> ShardDataset:
    options = dict(shuffle=True, shuffle_buffer=15, batch_size=4, seed=7)
    options.update(kwargs)
    return ShardDataset(shards, TrainAugment(SIZE), **options)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_the_next_unseen_sample(shards, workers):
    """Batches 6.. of a resumed stream are bit-identical to those of an uninterrupted one; the cut
    falls inside a shuffle group and, with 2 workers, in the middle of prefetched batches."""
    uninterrupted = ShardBatches(_train_dataset(shards), num_workers=workers)
    reference = [next(uninterrupted) for _ in range(12)]  # 48 samples: crosses an epoch of a worker slot

    first = ShardBatches(_train_dataset(shards), num_workers=workers)
    for _ in range(6):
        next(first)
    state = first.state_dict()
    resumed = ShardBatches(_train_dataset(shards), num_workers=workers)
    resumed.load_state_dict(state)
    for expected in reference[6:]:
        batch = next(resumed)
        assert batch["keys"] == expected["keys"]
        assert batch["texts"] == expected["texts"]
        assert torch.equal(batch["images"], expected["images"])  # augmentation reproduced too


def test_resume_with_replacement_and_mixed_sources(shards):
    def dataset():
        return _train_dataset(f"{shards[0]}::{shards[1]}@3;{shards[2]}::{shards[3]}@1", with_replacement=True)

    reference = ShardBatches(dataset())
    expected = [next(reference) for _ in range(10)]
    first = ShardBatches(dataset())
    for _ in range(4):
        next(first)
    resumed = ShardBatches(dataset())
    resumed.load_state_dict(first.state_dict())
    assert [next(resumed)["keys"] for _ in range(6)] == [b["keys"] for b in expected[4:]]


def test_sources_are_mixed_by_weight(shards):
    dataset = ShardDataset(f"{shards[0]}::{shards[1]}::{shards[2]}@3;{shards[3]}::{shards[4]}::{shards[5]}@1",
                           EvalResize(SIZE), seed=2)
    stream = dataset.samples(0, 1)
    first_source = sum(int(next(stream)["key"][1:]) < 30 for _ in range(400))
    assert 260 < first_source < 340  # 3:1 -> 300 expected (binomial sd ~9)


def test_resume_with_other_worker_count_continues_exactly(shards):
    reference = ShardBatches(_train_dataset(shards), num_workers=0)
    expected = [next(reference)["keys"] for _ in range(8)]
    first = ShardBatches(_train_dataset(shards), num_workers=0)
    for _ in range(3):
        next(first)
    resumed = ShardBatches(_train_dataset(shards), num_workers=2)
    resumed.load_state_dict(first.state_dict())
    assert [next(resumed)["keys"] for _ in range(5)] == expected[3:]


def test_caption_list_draws_one_per_visit(shards):
    dataset = ShardDataset(shards[:1], EvalResize(SIZE), caption_key="captions", seed=0)
    stream = dataset.samples(0, 1)
    seen = {}
    for _ in range(80):  # 8 epochs of one shard
        sample = next(stream)
        seen.setdefault(sample["key"], set()).add(sample["caption"])
    i = 3
    assert seen[f"s{i:05d}"] == {f"first {i}", f"second {i}"}


def test_take_and_captions_for_evaluation_and_tokenizers(shards):
    dataset = ShardDataset(shards[:2], EvalResize(SIZE), shuffle=False, epochs=1)
    assert keys(dataset.take(3)) == ["s00000", "s00001", "s00002"]
    assert dataset.captions(limit=12) == [f"caption {i}" for i in range(12)]
    assert len(dataset.captions()) == 20
    assert len(dataset) == 20  # from sizes.json
    sizes = Path(shards[0]).parent / "sizes.json"
    saved = sizes.read_text()
    sizes.unlink()
    try:
        assert len(ShardDataset(shards[:3], EvalResize(SIZE))) == 30  # from the tar headers
    finally:
        sizes.write_text(saved)


def test_build_from_config_and_train_batches(shards):
    from openvision2.data.build import build_from_config, fixed_batch, train_batches
    from openvision2.train.config import TrainConfig

    directory = shards[0].rsplit("/", 1)[0]
    config = TrainConfig(dataset="shards", train_shards=f"{directory}/s-{{000000..000004}}.tar",
                         val_shards=shards[5], image_size=SIZE, batch_size=8, grad_accum=2, num_workers=0,
                         val_samples=4)
    train, val = build_from_config(config.data, "train", SIZE), build_from_config(config.data, "val", SIZE)

    def collate(samples):
        return {"images": torch.stack([s["image"] for s in samples]), "texts": [s["caption"] for s in samples]}

    batches = train_batches(config.data, train, collate, batch_size=config.batch_size, micro_batches=config.grad_accum)
    batch = next(iter(batches))
    assert batch["images"].shape == (4, 3, SIZE, SIZE)  # batch 8 in 2 micro-batches
    assert batches.state_dict()["global_batch"] == 8 and batches.state_dict()["position"] == 0
    held_out = fixed_batch(val, collate, config.val_samples)
    assert held_out["texts"] == [f"caption {i}" for i in range(50, 54)]
    with pytest.raises(UserError):
        build_from_config(TrainConfig(dataset="shards").data, "train", SIZE)
