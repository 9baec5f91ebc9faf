"""One global sample order for shards: a pure function of (seed, position); each rank reads its slice of
every global batch; a resume on any number of ranks and workers continues with exactly the next samples
(compared by sample key with the uninterrupted order), from disk, over HTTP and on real gloo ranks."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from openvision2.data.augment import EvalResize
from openvision2.data.loader import ShardBatches
from openvision2.data.order import GlobalOrder, SourceOrder
from openvision2.data.remote import RemoteOptions
from openvision2.data.shards import ShardDataset
from openvision2.data.writer import ShardWriter
from openvision2.errors import DataSourceFailed, UserError

from shard_fixtures import image_bytes, write_shards

SIZE = 16
GLOBAL = 12  # global batch: 3, 6 and 4 per rank on 4, 2 and 3 ranks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """6 shards x 7 samples, every 13th sample broken (not an image)."""
    directory = tmp_path_factory.mktemp("corpus")
    with ShardWriter(directory, prefix="c", per_shard=7) as writer:
        for i in range(42):
            members = ({"jpg": b"<html>not an image</html>", "txt": "broken"} if i % 13 == 5
                       else {"jpg": image_bytes(i), "txt": f"caption {i}"})
            writer.write(f"c{i:05d}", members)
    return [str(directory / name) for name in sorted(writer.sizes)]


def dataset(spec, rank=0, world=1, remote=None, **kwargs) -> ShardDataset:
    options = dict(shuffle=True, shuffle_buffer=10, seed=5, batch_size=GLOBAL // world, rank=rank,
                   world_size=world, remote=remote)
    options.update(kwargs)
    return ShardDataset(spec, EvalResize(SIZE), **options)


def read_ranks(spec, world: int, steps: int, state: dict | None = None, workers: int = 0, remote=None):
    """`steps` global batches read by `world` simulated ranks: (keys in global order, the ranks' states)."""
    streams = []
    for rank in range(world):
        stream = ShardBatches(dataset(spec, rank, world, remote), num_workers=workers)
        if state is not None:
            stream.load_state_dict(state)
        streams.append(stream)
    keys = []
    for _ in range(steps):
        for stream in streams:  # rank r's slice follows rank r-1's in the global batch
            batch = next(stream)
            assert len(batch["keys"]) == GLOBAL // world
            keys += [k.rsplit("/", 1)[1] for k in batch["keys"]]
    states = [s.state_dict() for s in streams]
    bad = Counter()
    for s in streams:
        bad.update(s.local)
        s.close()
    return keys, states, bad


def test_source_order_is_a_permutation_of_each_epoch_shuffled_within_windows():
    counts = [9, 7, 0, 11, 5, 8]
    order = SourceOrder(counts, seed=1, source=0, shuffle=True, buffer=12)
    for epoch in range(3):
        located = [order.locate(epoch * 40 + j) for j in range(40)]
        assert len({(s, i) for s, i, _ in located}) == 40  # every sample once per epoch
        assert all(i < counts[s] for s, i, _ in located)
        windows = [w for _, _, (_, w) in located]
        assert windows == sorted(windows) and len(set(windows)) >= 3  # windows of >= 12 samples, in turn
        for w in set(windows):  # each window's samples are its shards' samples, in a shuffled order
            shards = {s for s, _, (_, ww) in located if ww == w}
            assert shards == {s for s in order.window_shards(epoch, w) if counts[s]}
    first, second = [order.locate(j)[:2] for j in range(40)], [order.locate(40 + j)[:2] for j in range(40)]
    assert first != second  # each epoch is drawn anew
    plain = SourceOrder(counts, seed=1, source=0, shuffle=False)
    assert [plain.locate(j)[:2] for j in range(12)] == [(0, i) for i in range(9)] + [(1, 0), (1, 1), (1, 2)]
    again = SourceOrder(counts, seed=1, source=0, shuffle=True, buffer=12)
    assert [again.locate(j)[:2] for j in range(80)] == first + second  # a pure function of (seed, position)


def test_sources_are_dealt_by_weight_in_every_block():
    order = GlobalOrder([SourceOrder([50], 0, 0), SourceOrder([50], 0, 1)], [3, 1], seed=4)
    sources = [order.source_index(p) for p in range(2 * 4096)]
    assert [s for s, _ in sources].count(0) == 2 * 3072  # the weights exactly, per block of 4096
    for source in (0, 1):
        indexes = [i for s, i in sources if s == source]
        assert indexes == list(range(len(indexes)))  # each source's sequence read in turn


def test_ranks_read_slices_of_one_global_order_and_resume_on_other_world_sizes(corpus):
    """4 -> 2 -> 3 simulated ranks: each resume continues with exactly the next samples of the
    uninterrupted single-rank order; bad samples are replaced the same way whatever the world size."""
    expected, _, bad_reference = read_ranks(corpus, 1, 9)
    assert len(set(expected[:36])) >= 34  # one epoch holds 42 positions, a few of them substitutes
    keys, [state, *others], bad = read_ranks(corpus, 4, 3)
    # the same position on every rank (the counters are summed over a real process group: the gloo test)
    assert all({**other, "bad": {}} == {**state, "bad": {}} for other in others)
    assert state["position"] == 3 and len(json.dumps(state)) < 300
    more, [state, _], bad2 = read_ranks(corpus, 2, 3, state)
    rest, _, bad3 = read_ranks(corpus, 3, 3, state)
    assert keys + more + rest == expected
    assert bad + bad2 + bad3 == bad_reference and bad_reference["not_image"] >= 3  # each bad position once


def test_resume_on_another_worker_count_continues_exactly(corpus):
    expected, _, _ = read_ranks(corpus, 1, 8)
    keys, [state], _ = read_ranks(corpus, 1, 3, workers=2)
    more, _, _ = read_ranks(corpus, 1, 5, state, workers=5)
    assert keys + more == expected


def test_http_shards_follow_the_same_order_and_resume_across_world_sizes(corpus, serve, tmp_path):
    base = serve(Path(corpus[0]).parent)
    urls = f"{base}/c-{{000000..000005}}.tar"
    remote = RemoteOptions(cache_dir=str(tmp_path / "cache"), retries=2, backoff=0.01, timeout=5)
    expected, _, _ = read_ranks(corpus, 1, 6)
    keys, [state, _], _ = read_ranks(urls, 2, 2, workers=1, remote=remote)
    more, _, _ = read_ranks(urls, 3, 4, state, workers=2, remote=remote)
    assert keys + more == expected
    assert os.listdir(tmp_path / "cache") == []  # each rank's cache is removed with its stream


def test_the_remote_cache_holds_the_windows_in_flight_not_the_corpus(tmp_path, serve):
    shards = write_shards(tmp_path / "many", "m", num_shards=12, per_shard=4)
    base = serve(Path(shards[0]).parent)
    remote = RemoteOptions(cache_dir=str(tmp_path / "cache"), retries=1, timeout=5)
    stream = ShardBatches(dataset(f"{base}/m-{{000000..000011}}.tar", remote=remote, shuffle_buffer=8,
                                  batch_size=4), num_workers=2)
    most = 0
    for _ in range(24):  # two epochs of 48 samples in windows of 2 shards
        next(stream)
        most = max(most, len([n for n in os.listdir(stream._cache.dir) if n.endswith(".tar")]))
    assert 2 <= most <= 8  # the windows of the micro-batches in flight and the next one, of 12 shards
    stream.close()


def test_a_source_that_fails_for_good_raises_data_source_failed(tmp_path):
    broken = tmp_path / "broken"
    with ShardWriter(broken, prefix="b", per_shard=10) as writer:
        for i in range(10):
            writer.write(f"b{i}", {"jpg": b"not an image", "txt": "x"})
    stream = ShardBatches(dataset(str(broken), batch_size=2))
    with pytest.raises(DataSourceFailed, match="no usable sample"):
        next(stream)
    assert issubclass(DataSourceFailed, UserError)


def test_resume_refuses_another_corpus_or_global_batch(corpus):
    _, [state], _ = read_ranks(corpus, 1, 1)
    stream = ShardBatches(dataset(corpus[:5]))
    with pytest.raises(UserError, match="same train_shards and batch_size"):
        stream.load_state_dict(state)
    stream = ShardBatches(dataset(corpus, batch_size=6))
    with pytest.raises(UserError, match="same train_shards and batch_size"):
        stream.load_state_dict(state)


# ------------------------------------------------------------------------------------ real gloo ranks
def _gloo_ranks(rank: int, world_size: int, port: int, spec: list[str], steps: int, state_file: str,
                out: str) -> None:
    import torch.distributed as dist

    from scaleout_helpers import end_worker

    code = 0
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        stream = ShardBatches(dataset(spec, rank, world_size), num_workers=0)
        if os.path.exists(state_file):
            stream.load_state_dict(json.loads(Path(state_file).read_text()))
        keys = [k.rsplit("/", 1)[1] for _ in range(steps) for k in next(stream)["keys"]]
        state = stream.state_dict()  # collective: the counters summed over the ranks
        stream.close()
        Path(out, f"rank-{rank}.json").write_text(json.dumps({"keys": keys, "state": state}))
        dist.barrier()
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        end_worker(code)


def test_gloo_ranks_resume_4_2_3_with_the_exact_next_samples(corpus, tmp_path):
    from scaleout_helpers import free_port, spawn

    expected, _, reference_bad = read_ranks(corpus, 1, 6)
    state_file, keys = tmp_path / "state.json", []
    for world in (4, 2, 3):
        out = tmp_path / f"world{world}"
        out.mkdir()
        spawn(_gloo_ranks, world, free_port(), corpus, 2, str(state_file), str(out))
        results = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world)]
        assert all(r["state"] == results[0]["state"] for r in results)
        per_rank = GLOBAL // world
        for step in range(2):  # the global batch = the ranks' slices in rank order
            keys += [k for r in results for k in r["keys"][step * per_rank:(step + 1) * per_rank]]
        state_file.write_text(json.dumps(results[0]["state"]))
    assert keys == expected
    assert json.loads(state_file.read_text())["bad"] == dict(reference_bad)


def test_order_memory_does_not_grow_with_the_samples():
    order = SourceOrder(np.full(100_000, 10_000), seed=0, source=0, buffer=10_000)
    order.locate(123_456_789)
    assert order.memory_bytes() < 4 << 20  # counts and one epoch's layout; a window's permutation


def test_bench_simulates_a_corpus_and_reports_its_bookkeeping(capsys):
    from openvision2.cli import main

    assert main(["bench", "data", "--simulate-corpus", "30x20", "--batch-size", "8", "--shuffle-buffer", "50",
                 "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["corpus"] == {"shards": 30, "samples_per_shard": 20, "samples": 600}
    assert figures["images"] == [8, 3, 32, 32]
    assert figures["state_bytes"]["json"] < 1024 and figures["order_us_per_sample"] > 0
    assert main(["bench", "data", "--simulate-corpus", "many"]) == 2
    assert "give SHARDSxSAMPLES" in capsys.readouterr().err
