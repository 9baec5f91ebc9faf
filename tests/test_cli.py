"""The `ov2` command end to end, and one-line errors for bad input."""

import numpy as np
import pytest
from PIL import Image

from openvision2.cli import main

def test_train_writes_metrics_and_a_self_contained_checkpoint(tiny_run):
    lines = (tiny_run / "metrics.jsonl").read_text().splitlines()
    assert any('"val_loss"' in line for line in lines) and any('"images_per_s"' in line for line in lines)
    latest = (tiny_run / "checkpoints" / "latest").read_text().strip()
    assert latest == "step-0000004"
    ckpt = tiny_run / "checkpoints" / latest
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json",
                                                "tokenizer_config.json"}
    assert len(list((tiny_run / "checkpoints").glob("step-*"))) == 2  # keep_checkpoints prunes older ones


def test_caption_command(tiny_run, tmp_path, capsys):
    path = tmp_path / "shapes.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    capsys.readouterr()
    assert main(["caption", "--checkpoint", str(tiny_run), str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}\t")


def one_line_error(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith("ov2 ")
    return err


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "encoder=Q/3"], "unknown encoder 'Q/3'"),
    (["train", "decoder=Q"], "unknown decoder 'Q'"),
    (["train", "keep_ratio=0"], "keep_ratio must be in (0, 1]"),
    (["train", "keep_ratio=1.5"], "keep_ratio must be in (0, 1]"),
    (["train", "stepz=3"], "unknown override key 'stepz'; did you mean steps"),
    (["train", "steps=many"], "override steps=many: expected an integer"),
    (["train", "keep_ratio=lots"], "override keep_ratio=lots: expected a number"),
    (["train", "steps"], "not of the form key=value"),
])
def test_bad_train_input_is_one_line(argv, message, capsys, tmp_path):
    argv = [argv[0], "--out", str(tmp_path / "r"), "--steps", "1", *argv[1:]] if "--preset" not in argv else argv
    assert message in one_line_error(argv + ["num_workers=0"] if "stepz=3" not in argv else argv, capsys)


def test_missing_or_unreadable_checkpoint(tmp_path, capsys):
    assert "does not exist" in one_line_error(["caption", "--checkpoint", str(tmp_path / "x"), "a.png"], capsys)
    assert "no checkpoint in" in one_line_error(["caption", "--checkpoint", str(tmp_path), "a.png"], capsys)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "config.json").write_text("{}")
    assert "cannot read checkpoint" in one_line_error(["caption", "--checkpoint", str(tmp_path), "a.png"], capsys)


def test_missing_or_unreadable_image(tiny_run, tmp_path, capsys):
    err = one_line_error(["caption", "--checkpoint", str(tiny_run), str(tmp_path / "none.png")], capsys)
    assert "does not exist" in err
    bad = tmp_path / "bad.png"
    bad.write_text("this is not an image")
    assert "cannot read image" in one_line_error(["caption", "--checkpoint", str(tiny_run), str(bad)], capsys)


def _parsers(parser, path=("ov2",)):
    """(path, parser) for ov2 and every command and target under it."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_flag_has_help_and_every_target_a_description():
    import argparse

    from openvision2.cli import build_parser

    for path, parser in _parsers(build_parser()):
        assert parser.description, " ".join(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                listed = {choice.dest for choice in action._choices_actions}
                assert all(choice.help for choice in action._choices_actions), " ".join(path)
                # the one unlisted entry is the old top-level caption-accuracy
                assert set(action.choices) - listed <= {"caption-accuracy"}, " ".join(path)
            elif action.help != argparse.SUPPRESS:
                assert action.help, f"{' '.join(path)} {action.option_strings or action.dest}"


def test_old_flag_names_are_hidden_aliases(capsys):
    import json

    assert main(["flops", "--encoder", "S/16", "--image-size", "64", "--json"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert main(["flops", "--model", "S/16", "--res", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == new and new["image_size"] == 64
    with pytest.raises(SystemExit):
        main(["flops", "--help"])
    text = capsys.readouterr().out
    assert "--image-size" in text and "--res" not in text and "--model" not in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "caption-accuracy" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == "ov2 0.1.0"


def test_eval_task_names_match_the_tasks():
    from openvision2.commands.eval import TASKS
    from openvision2.eval.tasks import TASKS as KNOWN

    assert TASKS == KNOWN
