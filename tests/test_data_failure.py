"""Issue 24 item 7: the data source dies in the middle of a run. The run saves a checkpoint, exits with
DATA_FAILED_EXIT (69) and one line; once the data is back, --resume continues exactly."""

from __future__ import annotations

import json
import stat

import pytest

from openvision2.cli import main
from openvision2.errors import DataSourceFailed
from openvision2.train.faults import DATA_FAILED_EXIT
from openvision2.train.loop import train
from scaleout_helpers import losses, tiny_config
from shard_fixtures import write_shards
from test_resume_and_faults import assert_same_run
from test_run_safety import ov2, train_args

STEPS = 10
FETCH = """#!/bin/sh
# A shard server that goes away once the run has logged its first step (metrics.jsonl $1 has a loss),
# and is back when the file $2 exists.
if grep -qs '"loss"' "$1" && [ ! -e "$2" ]; then echo "connection refused" >&2; exit 1; fi
exec cat "$3"
"""


def config(train_shards: str, corpus, cache, **changes):
    return tiny_config(**{"dataset": "shards", "train_shards": train_shards, "val_shards": f"{corpus}/v-000000.tar",
                          "shuffle_buffer": 12, "steps": STEPS, "ckpt_every": 1000, "shard_cache": str(cache),
                          "shard_retries": 1, "evals": "", **changes})


def server(tmp_path):
    fetch = tmp_path / "fetch.sh"
    fetch.write_text(FETCH)
    fetch.chmod(fetch.stat().st_mode | stat.S_IXUSR)
    return fetch


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    write_shards(directory, "t", num_shards=8, per_shard=8)
    write_shards(directory, "v", num_shards=1, per_shard=8, start=1000)
    return directory


class FailingAt:
    """The run's real batches until `count` micro-batches were handed out; then the source is gone."""

    def __init__(self, batches, count: int):
        self.batches, self.count = batches, count

    def __iter__(self):
        for handed, batch in enumerate(self.batches):
            if handed == self.count:
                raise DataSourceFailed("shard source 0 (http://data/...) gave no usable sample in a whole pass")
            yield batch

    def snapshot(self) -> dict:
        return self.batches.snapshot()

    def state_dict(self, snapshot: dict | None = None) -> dict:
        return self.batches.state_dict(snapshot)

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def test_a_failed_source_saves_the_last_step_exits_69_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    """The source fails in the middle of step 4 (its first micro-batch already read): step 3 is saved
    with the data position after step 3, so the resume reads step 4 whole and matches a run that never
    stopped."""
    from openvision2.train import loop

    quick = tiny_config(steps=6, ckpt_every=1000, grad_accum=2, evals="")
    reference = tmp_path / "uninterrupted"
    train(quick, reference, progress=False)
    real = loop.train_batches
    monkeypatch.setattr(loop, "train_batches", lambda *a, **k: FailingAt(real(*a, **k), count=3 * 2 + 1))
    capsys.readouterr()
    assert main(train_args(quick, tmp_path / "run")) == DATA_FAILED_EXIT == 69
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "the training data failed (shard source 0 (http://data/...)" in error[0]
    assert "step-0000003: continue with --resume once the data is back" in error[0]
    assert max(losses(tmp_path / "run")) == 3
    monkeypatch.undo()
    train(quick, tmp_path / "run", progress=False, resume=True)
    assert_same_run(tmp_path / "run", reference)


def test_a_shard_server_that_dies_ends_the_run_saved_with_exit_69(corpus, tmp_path):
    """The real thing: `pipe:` shards whose server goes away after the first step. The steps until the
    source counts as failed use what is still readable; the run saves, exits 69, and continues once the
    server is back."""
    out, back = tmp_path / "run", tmp_path / "back"
    remote = config(f"pipe:{server(tmp_path)} {out / 'metrics.jsonl'} {back} {corpus}/t-{{000000..000007}}.tar",
                    corpus, tmp_path / "cache", num_workers=1, steps=60, shuffle_buffer=4)
    run = ov2(*train_args(remote, out))
    assert run.returncode == DATA_FAILED_EXIT, run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in run.stderr and "once the data is back" in errors[0]
    saved = int((out / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 1 <= saved < 60 and max(losses(out)) == saved  # every step taken was saved
    back.touch()  # the server is back
    assert train(remote, out, progress=False, resume=True)["step"] == 60


def test_data_that_never_came_is_bad_input_not_a_failure(corpus, tmp_path):
    """A fresh run whose data gives nothing at all has a wrong source (exit 2), not a lost one."""
    remote = config(f"pipe:{server(tmp_path)} {tmp_path / 'metrics.jsonl'} {tmp_path / 'never'} {corpus}/t-{{000000..000007}}.tar",
                    corpus, tmp_path / "cache")
    (tmp_path / "metrics.jsonl").write_text('{"loss": 1}\n')  # the server is gone from the start
    run = ov2(*train_args(remote, tmp_path / "run"))
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
