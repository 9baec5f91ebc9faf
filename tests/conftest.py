"""Shared fixtures: one thread for the session, and one tiny model / checkpoint / trained run that
every test file uses instead of building its own."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

TINY_IMAGE_SIZE = 32
# `ov2 train` overrides for a run of seconds: mu/8 encoder and decoder at 32 px on the embedded dataset
TINY_RUN = ["encoder=mu/8", "decoder=mu", "image_size=32", "text_len=32", "train_samples=256", "val_samples=8",
            "batch_size=8", "warmup_steps=2", "eval_every=3", "ckpt_every=3", "show_captions=2", "num_workers=0",
            "precision=fp32"]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Test models are tiny: one thread is as fast as two, and far faster when the machine is busy.
    # (Bitwise resume comparisons also need the same GEMM blocking in every run.)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 64-piece BPE trained on the embedded dataset's captions."""
    from openvision2.data.synthetic import SyntheticCaptions
    from openvision2.tokenizer import CaptionTokenizer

    return CaptionTokenizer.train_bpe(SyntheticCaptions(300, image_size=TINY_IMAGE_SIZE).captions(), vocab_size=64)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    """(model, tokenizer): an untrained mu/8 + mu OpenVision 2 at 32 px, text_len 24, in eval mode.
    Shared by the whole session: do not modify it."""
    from openvision2.models import ModelConfig, OpenVision2

    torch.manual_seed(0)
    model = OpenVision2(ModelConfig(encoder="mu/8", decoder="mu", image_size=TINY_IMAGE_SIZE,
                                    vocab_size=tiny_tokenizer.vocab_size, text_len=24)).eval()
    return model, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory, tiny_model):
    """tiny_model saved as a checkpoint directory."""
    from openvision2.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint", *tiny_model)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run directory `ov2 train` wrote (4 steps of the TINY_RUN shape): config.json, metrics.jsonl,
    checkpoints/step-0000003, step-0000004 and latest."""
    from openvision2.cli import main

    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--out", str(out), "--steps", "4", "--no-progress", *TINY_RUN]) == 0
    return out


@pytest.fixture
def serve():
    """serve(directory, missing=[...], drop=[...], drop_once=[...], drip=[...], endless=[...]) ->
    "http://127.0.0.1:PORT": tests/shard_server.py over the directory, misbehaving for the named shards."""
    servers = []

    def start(directory, **behaviour) -> str:
        command = [sys.executable, str(Path(__file__).with_name("shard_server.py")), str(directory)]
        for flag, names in behaviour.items():
            command += [arg for name in names for arg in (f"--{flag.replace('_', '-')}", name)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        servers.append(process)
        return f"http://127.0.0.1:{process.stdout.readline().strip()}"

    yield start
    for process in servers:
        process.terminate()
        process.wait(timeout=10)
