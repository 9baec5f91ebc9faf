"""Every `ov2` command form written in README.md and docs/*.md parses with today's parser, under its
documented flag names and under the names it had before the flags were made consistent, so a renamed
flag can never silently break a documented command. Cheap forms run for real; the rest are checked
by parsing (which is where a renamed flag fails) and by their command's --help."""

import re
import shlex
from pathlib import Path

import pytest

from openvision2.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a code line that runs ov2: `[VAR=value ...] [.venv/bin/]ov2 ...`, or `$(which ov2) ...` / `-m openvision2.cli ...`
# inside a torchrun line
START = re.compile(r"^\s*(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?ov2 |\$\(which ov2\) |-m openvision2\.cli ")

# The documented forms as they were written before the flag names were made consistent
# (--model -> --encoder, --res -> --image-size, --batch -> --batch-size, shards --images -> --image-dir,
# eval captions --images -> --caption-images, caption --seed -> --decode-seed, caption-accuracy -> eval ...).
OLD_FORMS = [
    "flops --model L/14 --res 224 --method openvision1",
    "flops --model So400m/14 --res 384 --method openvision1",
    "bench --model S/16 --res 224",
    "bench --model S/16 --res 224 --batch 4 --json",
    "bench --model S/16 --res 224 --batch 16 --methods openvision2,openvision1,coca --rounds 2 --steps-per-round 2 "
    "--warmup 1 --json",
    "bench data --res 84,224 --images 1000 --json",
    "shards --images photos/ --captions captions.csv --out data/mine",
    "shards --images photos/ --captions recap.jsonl --caption-column re_caption --out data/recap",
    "caption-accuracy --checkpoint runs/fmnist --shards data/fashion-mnist/test-000000.tar",
    "caption-accuracy --checkpoint /tmp/fm_final --shards data/fashion-mnist/test-000000.tar --json",
    "eval captions --checkpoint runs/a --images 3 --decoding sample --decode-seed 1",
    "caption --checkpoint runs/a --decoding sample --top-p 0.9 --seed 3 image1.png",
    "eval speed --encoder S/16 --decoder S --image-size 224 --batch-size 4 --new-tokens 30 --repeats 1",
]
# forms cheap enough to run for real
RUN = ("flops ", "train --list", "train --list-keys")


def _code_lines(text: str):
    """Lines of indented or fenced code blocks, with backslash continuations joined."""
    fenced = False
    joined = ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")):
            continue
        joined += line.rstrip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        yield joined
        joined = ""


def documented_forms() -> list[str]:
    forms = []
    for document in DOCUMENTS:
        for line in _code_lines(document.read_text()):
            line = line.split(" #", 1)[0]
            for match in START.finditer(line):
                command = line[match.end():].strip()
                if "..." in command or not command:
                    continue
                # "zeroshot|probe" names alternatives: one form per alternative
                words = command.split()
                alternatives = [w.split("|") if "|" in w and "'" not in w else [w] for w in words]
                variants = [[]]
                for options in alternatives:
                    variants = [v + [o] for v in variants for o in options]
                forms += [" ".join(v) for v in variants]
    return sorted(set(forms))


FORMS = documented_forms()


def test_the_documents_hold_command_forms():
    commands = {form.split()[0] for form in FORMS}
    assert {"train", "caption", "eval", "shards", "export", "import", "flops", "bench", "report"} <= commands


@pytest.mark.parametrize("form", FORMS + OLD_FORMS)
def test_documented_form_parses(form, capsys):
    argv = shlex.split(form)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:
        pytest.fail(f"`ov2 {form}` no longer parses: {capsys.readouterr().err.strip()} (exit {exit.code})")
    assert callable(args.run)
    # the command (and target) it names has a working --help
    path = [w for w in argv[:2] if not w.startswith("-") and "=" not in w and "/" not in w]
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args([*path, "--help"])
    assert exit.value.code == 0


@pytest.mark.parametrize("form", [f for f in FORMS + OLD_FORMS if f.startswith(RUN)])
def test_cheap_documented_form_runs(form, capsys):
    assert main(shlex.split(form)) == 0
    assert capsys.readouterr().out.strip()
