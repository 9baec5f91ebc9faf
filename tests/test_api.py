"""The Python API at the package's top level, and a package import that costs no torch."""

import subprocess
import sys

import torch
from PIL import Image

import openvision2
from openvision2.checkpoint import Checkpoint


def test_load_checkpoint_gives_one_object_that_still_unpacks(tiny_checkpoint_dir):
    loaded = openvision2.load_checkpoint(tiny_checkpoint_dir)
    assert isinstance(loaded, Checkpoint)
    model, tokenizer, meta = loaded  # the old 3-tuple form
    assert (loaded.model, loaded.tokenizer, loaded.config) == (model, tokenizer, meta)
    assert meta["model"]["encoder"] == "mu/8" and not model.training
    again = openvision2.from_pretrained(tiny_checkpoint_dir)
    assert again.config == meta and again.model.config == model.config


def test_caption_and_generate_at_the_top_level(tiny_checkpoint_dir):
    loaded = openvision2.from_pretrained(tiny_checkpoint_dir)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    texts = openvision2.generate(loaded.model, loaded.tokenizer, images).texts
    assert openvision2.caption(loaded.model, loaded.tokenizer, images) == texts
    assert loaded.caption([Image.fromarray(images[0].permute(1, 2, 0).numpy())]) == texts[:1]
    # the submodule stays a module: `from openvision2 import generate; generate.greedy_caption`
    from openvision2 import generate

    assert generate.greedy_caption(loaded.model, loaded.tokenizer, images) == texts


def _imported_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", f"import sys\n{code}\n"
                          "print(' '.join(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_package_and_cli_parser_import_no_torch():
    assert _imported_after("import openvision2; openvision2.__version__") == []
    assert _imported_after("from openvision2.cli import build_parser; build_parser()") == []
