"""The scale check's tiny version (scripts/scale_check.sh runs it with ViT-L/14 and So400m/14): FSDP2 from
the meta device, selective checkpointing and bf16 on gloo ranks, training on shards with every rank
logging the samples it takes (OV2_TRACE_SAMPLES). A 4-rank checkpoint resumed on 2 ranks, then on 3,
takes exactly the next samples of the uninterrupted order; a rank SIGKILLed under
`torchrun --max-restarts=1` is restarted and the run resumes from its newest checkpoint with the
uninterrupted run's samples and losses, bit for bit."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import traceback
from pathlib import Path

import pytest

from scaleout_helpers import end_worker, free_port, spawn
from shard_fixtures import write_shards

STEPS, BATCH = 3, 12  # 12 = 3, 6 and 4 per rank on 4, 2 and 3 ranks


def _load_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "scale_check.py"
    spec = importlib.util.spec_from_file_location("scale_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("scale_check", module)
    spec.loader.exec_module(module)
    return module


scale_check = _load_script()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """8 training shards of 12 samples (keys t00000...), one held-out shard."""
    root = tmp_path_factory.mktemp("scale-data")
    write_shards(root / "train", "t", 8, 12)
    write_shards(root / "val", "v", 1, 8)
    return root


def overrides(data: Path, steps: int = STEPS) -> list[str]:
    """The script's l14-stage1 overrides at its tiny size (1-block models), as `ov2 train` gets them."""
    return ["method=openvision2", *scale_check.SIZES["tiny"]["l14"], *scale_check.run_overrides(data, steps, BATCH),
            "alt_caption_key=", "ckpt_every=1", "num_workers=0"]  # OV2 reads no alt-text


def _train_ranks(rank: int, world_size: int, port: int, jobs: list[tuple[list[str], str, bool, str]]) -> None:
    """Spawned worker: as rank `rank`, train each (overrides, out, resume, trace dir) job of the l14-stage1 preset."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    code = 0
    try:
        from openvision2.train.config import apply_overrides
        from openvision2.train.loop import train
        from openvision2.train.presets import get_preset

        for args, out, resume, trace in jobs:
            os.environ["OV2_TRACE_SAMPLES"] = trace
            train(apply_overrides(get_preset("l14-stage1"), args), out, progress=False, resume=resume)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        end_worker(code)


def run_ranks(world_size: int, args: list[str], out: Path, resume: bool = False) -> dict[int, list[str]]:
    """Train on `world_size` gloo ranks; returns step -> the keys of all ranks' samples, in rank order."""
    trace = out.with_name(out.name + "-trace")
    trace.mkdir()
    spawn(_train_ranks, world_size, free_port(), [(args, str(out), resume, str(trace))])
    return scale_check.samples_by_step(trace, world_size)


def assert_finite(run: Path) -> None:
    got = scale_check.losses(run)
    assert got and all(math.isfinite(v) for v in got.values())


def test_resume_on_2_then_3_ranks_takes_the_exact_next_samples(data, tmp_path):
    reference = run_ranks(4, overrides(data), tmp_path / "four")
    assert sorted(reference) == [1, 2, 3] and all(len(keys) == BATCH for keys in reference.values())
    assert len({k for keys in reference.values() for k in keys}) == STEPS * BATCH  # none repeated
    scale_check.copy_up_to(tmp_path / "four", 1, tmp_path / "two")
    two = run_ranks(2, overrides(data), tmp_path / "two", resume=True)
    scale_check.copy_up_to(tmp_path / "two", 2, tmp_path / "three")
    three = run_ranks(3, overrides(data), tmp_path / "three", resume=True)
    for run in ("four", "two", "three"):
        assert_finite(tmp_path / run)
    assert sorted(two) == [2, 3] and sorted(three) == [3]
    assert two == {step: reference[step] for step in (2, 3)}
    assert three == {3: reference[3]}


def test_a_rank_sigkilled_under_torchrun_is_restarted_and_resumes(data, tmp_path):
    steps = 6  # tiny steps are quick: room for the kill to land before the run ends
    reference = run_ranks(2, overrides(data, steps), tmp_path / "reference")
    launch = scale_check.Launch("restart", tmp_path, 2, tmp_path / "restart",
                                ["--preset", "l14-stage1", *overrides(data, steps)], sys.executable, max_restarts=1)
    assert launch.run(kill=(1, 2, 0.0), timeout=240) == 0, launch.log.read_text()[-3000:]
    # rank 1 died in step 2 or just after; the second attempt starts after the newest checkpoint of that moment
    newest = int(launch.killed["newest"].removeprefix("step-"))
    attempts = launch.attempts()
    assert sorted(attempts) == [0, 1] and attempts[0][0] == 1 and attempts[1] == list(range(newest + 1, steps + 1))
    assert launch.steps() == reference
    assert scale_check.losses(tmp_path / "restart") == scale_check.losses(tmp_path / "reference")
