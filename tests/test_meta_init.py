"""A model built on the meta device trains under every wrapping: OpenVision 1 (whose logit_scale was a
0-dim parameter that FSDP2 refuses) sharded by FSDP2 and resumed exactly on 2 gloo ranks; OpenVision 2
under DDP (which must receive a materialised model). Old checkpoints with a 0-dim logit_scale load."""

from __future__ import annotations

import os
import shutil
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from openvision2.train.config import TrainConfig
from scaleout_helpers import end_worker, final_weights, free_port, losses, rewind_to, spawn, tiny_config


def ov1_config(**changes) -> TrainConfig:
    return tiny_config(method="openvision1", text_encoder="mu", alt_text_len=8, **changes)


def _meta_init_runs(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = 0
    try:
        import torch.distributed as dist

        from openvision2.train.loop import train

        root = Path(out)
        fsdp = ov1_config(parallel="fsdp", meta_init=True, steps=4, ckpt_every=2, keep_checkpoints=4)
        train(fsdp, root / "whole", progress=False)
        if rank == 0:
            shutil.copytree(root / "whole", root / "resumed")
            rewind_to(root / "resumed", 2)
        dist.barrier()
        train(fsdp, root / "resumed", progress=False, resume=True)
        train(tiny_config(parallel="ddp", meta_init=True, steps=2), root / "ddp", progress=False)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        end_worker(code)


def test_meta_init_under_fsdp_with_resume_and_under_ddp(tmp_path):
    spawn(_meta_init_runs, 2, free_port(), str(tmp_path))
    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert sorted(whole) == [1, 2, 3, 4] and resumed == whole  # steps 3, 4 replayed bit for bit
    expected, got = final_weights(tmp_path / "whole"), final_weights(tmp_path / "resumed")
    assert got.keys() == expected.keys() and "logit_scale" in got
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    ddp = losses(tmp_path / "ddp")
    assert sorted(ddp) == [1, 2] and all(0 < loss < 100 for loss in ddp.values())


def _as_saved_before(checkpoint: Path) -> None:
    """Rewrite a checkpoint as OpenVision 1 saved it before logit_scale had shape [1]: 0-dim in the
    export and in the resumable state (the parameter and its two Adam moments)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp

    weights = load_file(checkpoint / "model.safetensors")
    save_file({**weights, "logit_scale": weights["logit_scale"].reshape(())}, checkpoint / "model.safetensors")
    flat = checkpoint / "state.pt"
    dcp_to_torch_save(checkpoint / "dcp", flat)
    state = torch.load(flat, weights_only=True)
    state["model"]["logit_scale"] = state["model"]["logit_scale"].reshape(())
    moments = state["optim"]["state"]["logit_scale"]
    moments.update({k: v.reshape(()) for k, v in moments.items() if k != "step"})
    shutil.rmtree(checkpoint / "dcp")
    torch.save(state, flat)
    torch_save_to_dcp(flat, checkpoint / "dcp")
    flat.unlink()


def test_a_checkpoint_with_a_scalar_logit_scale_still_loads(tmp_path):
    """Checkpoints written before logit_scale had shape [1] hold it 0-dim: `ov2 caption` / `ov2 eval`,
    init_from and --resume read them, with the same values (the resumed run is the uninterrupted one)."""
    from openvision2.checkpoint import load_checkpoint
    from openvision2.methods import build_model
    from openvision2.train.loop import train
    from openvision2.train.state import load_weights_from

    config = ov1_config(steps=2, ckpt_every=1, keep_checkpoints=2)
    train(config, tmp_path / "whole", progress=False)
    shutil.copytree(tmp_path / "whole", tmp_path / "old")
    rewind_to(tmp_path / "old", 1)
    old = tmp_path / "old" / "checkpoints" / "step-0000001"
    weights = load_file(old / "model.safetensors")
    assert weights["logit_scale"].shape == (1,)
    _as_saved_before(old)

    model = load_checkpoint(old).model
    assert model.logit_scale.shape == (1,) and torch.equal(model.logit_scale, weights["logit_scale"])
    fresh = build_model(model.config)
    load_weights_from(old, fresh)
    assert torch.equal(fresh.logit_scale, weights["logit_scale"])

    train(config, tmp_path / "old", progress=False, resume=True)
    assert losses(tmp_path / "old") == losses(tmp_path / "whole")
    expected, got = final_weights(tmp_path / "whole"), final_weights(tmp_path / "old")
    assert all(torch.equal(got[name], expected[name]) for name in expected)
