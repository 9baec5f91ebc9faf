"""What the decoder sees at evaluation (DESIGN.md §1.3) and the stuttering measure of `ov2 eval captions`."""

import json

import pytest

from openvision2.cli import main
from openvision2.eval.caption_metrics import repeated_phrase_share, repeats_a_phrase
from openvision2.models import ModelConfig
from openvision2.errors import UserError

from interop_fixtures import tiny_checkpoint


@pytest.mark.parametrize("text,phrase,word", [
    ("a large blue a large blue circle", True, True),
    ("three three small blue two small blue triangles", False, True),
    ("two small red squares and two small red circles", False, False),
    ("a b a b", True, True),
    ("", False, False),
])
def test_repeated_phrase_detection(text, phrase, word):
    assert repeats_a_phrase(text) is phrase
    assert repeats_a_phrase(text, min_words=1) is word


def test_repeated_phrase_share():
    assert repeated_phrase_share(["a red cat a red cat", "a red cat", "one two", "x y x y"]) == 0.5


def test_eval_keep_ratio_default_and_range():
    assert ModelConfig().eval_keep_ratio == 0.0 and ModelConfig().decoding_keep_ratio == 0.35
    assert ModelConfig(eval_keep_ratio=1.0).decoding_keep_ratio == 1.0
    with pytest.raises(UserError, match="keep_ratio"):
        ModelConfig(eval_keep_ratio=1.5)


def test_eval_captions_reports_the_share_and_the_keep_ratio(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt")
    for ratio in ("1.0", "0.35"):
        assert main(["eval", "captions", "--checkpoint", str(tmp_path / "ckpt"), "--images", "4", "--json",
                     "--eval-keep-ratio", ratio]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["eval_keep_ratio"] == float(ratio) and 0.0 <= result["repeated_phrase_share"] <= 1.0
        assert result["reference_repeated_phrase_share"] == 0.0
    assert main(["eval", "captions", "--checkpoint", str(tmp_path / "ckpt"), "--eval-keep-ratio", "0"]) == 2
