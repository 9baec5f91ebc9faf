"""Shards over HTTP (a real server in a subprocess) and from `pipe:` commands: the same samples as from
disk, failures counted as unreadable_shard without stopping the run, and exact resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from openvision2.data.augment import EvalResize
from openvision2.data.remote import RemoteOptions, ShardCache, is_remote
from openvision2.data.shards import ShardDataset, parse_sources
from openvision2.data.tarindex import UnreadableShard
from openvision2.train.loop import train
from shard_fixtures import write_shards
from test_resume_and_faults import assert_same_run, start_child, wait_for_step
from scaleout_helpers import tiny_config

FAST = RemoteOptions(retries=2, backoff=0.01, timeout=5)


@pytest.fixture
def shards(tmp_path):
    return write_shards(tmp_path / "shards", "t", num_shards=4, per_shard=6)


def _pass(spec, remote=FAST, **kwargs):
    dataset = ShardDataset(spec, EvalResize(16), shuffle=False, epochs=1, remote=remote, **kwargs)
    stream = dataset.open_slot(0, 1)
    samples = []
    try:
        while (sample := stream.next_sample()) is not None:
            samples.append(sample)
        return samples, stream.bad.as_dict()
    finally:
        stream.close()


def test_remote_specs_are_recognised_and_expanded():
    assert is_remote("https://host/a.tar") and is_remote("s3://b/a.tar") and is_remote("hf://datasets/o/n/a.tar")
    assert is_remote("pipe:curl -s http://host/a.tar") and not is_remote("data/a.tar")
    [source] = parse_sources("pipe:cat data/t-{000000..000002}.tar")
    assert source.shards == tuple(f"pipe:cat data/t-00000{i}.tar" for i in range(3))
    a, b = parse_sources("https://host/a-{0..1}.tar@0.7;s3://bucket/b-{0..2}.tar@0.3")
    assert (len(a.shards), a.weight, b.shards[2], b.weight) == (2, 0.7, "s3://bucket/b-2.tar", 0.3)


def test_http_and_pipe_give_the_samples_of_the_local_shards(shards, serve, tmp_path):
    base = serve(Path(shards[0]).parent)
    local, _ = _pass(shards)
    for spec in (f"{base}/t-{{000000..000003}}.tar", f"pipe:cat {Path(shards[0]).parent}/t-{{000000..000003}}.tar"):
        remote, bad = _pass(spec, remote=RemoteOptions(cache_dir=str(tmp_path / "cache")))
        assert bad == {}
        assert [s["key"] for s in remote] == [s["key"] for s in local] and len(local) == 24
        assert all(torch.equal(r["image"], s["image"]) for r, s in zip(remote, local))
        assert remote[0]["shard"].startswith(spec[:10])  # logs and keys name the URL, not the cached copy
    assert os.listdir(tmp_path / "cache") == []  # every slot's cache is removed when it ends


def test_missing_and_dropped_shards_are_counted_and_skipped(shards, serve):
    base = serve(Path(shards[0]).parent, missing=["t-000001.tar"], drop=["t-000002.tar"],
                 drop_once=["t-000003.tar"])
    samples, bad = _pass(f"{base}/t-{{000000..000003}}.tar")
    assert bad == {"unreadable_shard": 2}  # the 404 and the shard whose connection always drops
    assert sorted({s["shard"].rsplit("/", 1)[1] for s in samples}) == ["t-000000.tar", "t-000003.tar"]
    assert len(samples) == 12  # the shard dropped once arrives whole on its second try


def test_failing_and_hanging_commands_never_stop_the_stream(shards, tmp_path):
    started = time.monotonic()
    spec = f"pipe:exit 3::pipe:sleep 60::pipe:cat {shards[0]}"
    samples, bad = _pass(spec, remote=RemoteOptions(retries=1, timeout=0.5))
    assert bad == {"unreadable_shard": 2} and len(samples) == 6
    assert time.monotonic() - started < 30  # the stalled command was killed after 0.5 s without output


def test_a_dripping_server_meets_the_deadline_and_an_endless_body_the_size_cap(shards, serve, tmp_path):
    """One byte every 2 s never times out a read, so only the overall deadline ends the try; a body that
    never ends would fill the cache disk: the size cap ends it, without a retry. Both are counted."""
    base = serve(Path(shards[0]).parent, drip=["t-000001.tar"], endless=["t-000002.tar"])
    started = time.monotonic()
    options = RemoteOptions(retries=1, timeout=5, deadline=3, max_bytes=1 << 20,
                            cache_dir=str(tmp_path / "cache"))
    samples, bad = _pass(f"{base}/t-{{000000..000003}}.tar", remote=options)
    assert bad == {"unreadable_shard": 2} and len(samples) == 12
    assert time.monotonic() - started < 30
    cache = ShardCache(options)
    try:
        with pytest.raises(UnreadableShard, match="after 1 try: larger than shard_max_bytes"):
            cache.get(f"{base}/t-000002.tar")
        with pytest.raises(UnreadableShard, match="not complete after the 3 s deadline"):
            cache.get(f"{base}/t-000001.tar")
    finally:
        cache.close()


def test_the_cache_keeps_only_wanted_shards_and_reads_ahead(shards, serve, tmp_path):
    base = serve(Path(shards[0]).parent)
    urls = [f"{base}/{Path(s).name}" for s in shards]
    cache = ShardCache(RemoteOptions(cache_dir=str(tmp_path)))
    try:
        first = cache.get(urls[0])
        assert Path(first).read_bytes() == Path(shards[0]).read_bytes()
        cache.want("a", urls[:1], urls[1:3])  # urls[1:3] are fetched in the background
        assert Path(cache.get(urls[2])).read_bytes() == Path(shards[2]).read_bytes()
        cache.get(urls[1])  # (nothing in flight now)
        cache.want("a", urls[2:3], [])
        assert sorted(os.listdir(cache.dir)) == [os.path.basename(cache.local_path(urls[2]))]
        with pytest.raises(UnreadableShard, match="HTTP 404"):
            cache.get(f"{base}/nothing.tar")
    finally:
        cache.close()
    assert not os.path.exists(cache.dir)


# ----------------------------------------------------------------------- training, killed and resumed
STEPS = 10


def _config(train_shards: str, val_shards: str, cache: Path):
    return tiny_config(dataset="shards", train_shards=train_shards, val_shards=val_shards, shuffle_buffer=12,
                       steps=STEPS, ckpt_every=2, keep_checkpoints=2, shard_cache=str(cache), shard_retries=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    write_shards(directory, "t", num_shards=4, per_shard=16)
    write_shards(directory, "v", num_shards=1, per_shard=8, start=1000)
    return directory


@pytest.fixture(scope="module")
def from_disk(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("from-disk")
    train(_config(f"{corpus}/t-{{000000..000003}}.tar", f"{corpus}/v-000000.tar", out / "cache"), out,
          progress=False)
    return out


@pytest.mark.parametrize("kind", ["http", "pipe"])
def test_training_from_remote_shards_resumes_exactly_after_a_kill(kind, corpus, from_disk, serve, tmp_path):
    """A run reading http:// URLs (or `pipe:cat` commands), SIGKILLed and resumed, is bit-identical to
    the same run reading the files from disk."""
    prefix = serve(corpus) + "/" if kind == "http" else f"pipe:cat {corpus}/"
    config = _config(prefix + "t-{000000..000003}.tar", prefix + "v-000000.tar", tmp_path / "cache")
    out = tmp_path / "run"
    process = start_child(config, out)
    wait_for_step(out, 5, process)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    train(config, out, progress=False, resume=True)
    assert_same_run(out, from_disk)
    assert os.listdir(tmp_path / "cache") == []  # the killed run's cache was swept by the next one


def test_fsspec_urls_are_fetched_and_missing_ones_counted(shards):
    """s3://, gs://, hf:// go through fsspec; its in-memory filesystem stands in for them here."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in shards[:2]:
        fs.pipe(f"/ov2-test/{Path(path).name}", Path(path).read_bytes())
    samples, bad = _pass("memory://ov2-test/t-{000000..000002}.tar")
    assert len(samples) == 12 and bad == {"unreadable_shard": 1}  # t-000002 is not there: no retry either
    assert samples[0]["shard"] == "memory://ov2-test/t-000000.tar"


def test_bench_data_reads_shards_over_http(shards, serve, capsys):
    from openvision2.cli import main

    base = serve(Path(shards[0]).parent)
    assert main(["bench", "data", "--shards", f"{base}/t-{{000000..000003}}.tar", "--pipelines", "openvision2",
                 "--images", "30", "--batch-size", "10", "--image-size", "32", "--shuffle-buffer", "6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["openvision2"]["by_res"]["32"]["wall_images_per_s"] > 0
    assert result["corpus"] == {"shards": [f"{base}/t-{{000000..000003}}.tar"]}


def test_dataloader_workers_read_urls_like_files_and_clean_up(shards, serve, tmp_path):
    from openvision2.data.loader import ShardBatches

    base = serve(Path(shards[0]).parent)

    def keys(spec):
        dataset = ShardDataset(spec, EvalResize(16), shuffle_buffer=6, batch_size=4,
                               remote=RemoteOptions(cache_dir=str(tmp_path / "cache")))
        batches = ShardBatches(dataset, num_workers=2)
        got = [[k.rsplit(":", 1)[1] for k in next(batches)["keys"]] for _ in range(8)]
        del batches
        return got

    assert keys(f"{base}/t-{{000000..000003}}.tar") == keys(shards)
    deadline = time.monotonic() + 20
    while os.listdir(tmp_path / "cache") and time.monotonic() < deadline:  # the workers' exit removes them
        time.sleep(0.1)
    assert os.listdir(tmp_path / "cache") == []


def test_training_goes_on_past_a_missing_and_a_dropping_shard(corpus, serve, tmp_path):
    base = serve(corpus, missing=["t-000001.tar"], drop=["t-000002.tar"])
    config = _config(f"{base}/t-{{000000..000003}}.tar", f"{base}/v-000000.tar", tmp_path / "cache")
    config.steps, config.ckpt_every, config.shard_retries = 6, 1000, 1  # 48 samples: more than an epoch holds
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["step"] == 6
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "bad_samples" in r][-1]
    # both bad shards counted (a second epoch may have begun and counted one again), nothing else lost
    assert last["bad_samples/unreadable_shard"] >= 2 and last["bad_samples"] == last["bad_samples/unreadable_shard"]


def test_the_config_sets_the_deadline_and_the_size_cap():
    from openvision2.data.build import remote_options
    from openvision2.data.config import DataConfig

    options = remote_options(DataConfig(shard_deadline=5.0, shard_max_bytes=1000).validate())
    assert (options.deadline, options.max_bytes) == (5.0, 1000)
    assert (RemoteOptions().deadline, RemoteOptions().max_bytes) == (1800.0, 64 << 30)


def test_storage_options_must_be_a_json_object():
    from openvision2.data.config import DataConfig
    from openvision2.errors import UserError

    assert DataConfig(shard_storage_options='{"anon": true}').validate().storage_options() == {"anon": True}
    for bad in ("anon", "[1]"):
        with pytest.raises(UserError, match="shard_storage_options"):
            DataConfig(shard_storage_options=bad).validate()
