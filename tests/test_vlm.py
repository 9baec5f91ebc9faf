"""`ov2 eval vlm` (issue 12 §1): the VQA split of the embedded dataset, exact-match scoring, and the
LLaVA protocol end to end on a tiny encoder with a tiny LM, through the hf export and transformers."""

import json
import random

import pytest
import torch
from transformers import AutoModel, LlamaConfig, LlamaForCausalLM

from openvision2.cli import main
from openvision2.data import synthetic
from openvision2.interop import export_checkpoint
from openvision2.vlm.llava import PooledTower, word_tokenizer
from openvision2.vlm.vqa import QUESTION_TYPES, normalize_answer, scene_questions, score, synthetic_vqa

from interop_fixtures import TOL, images, max_diff, tiny_checkpoint

SMALL = ["--train-images", "24", "--test-images", "8", "--stage1-steps", "2", "--stage2-steps", "3",
         "--batch-size", "8", "--json"]


def test_questions_are_answered_by_the_scene():
    for index in range(200):
        scene = synthetic.make_scene(index, "val")
        qa = scene_questions(scene, random.Random(index), want_yes=index % 2 == 0)
        totals = {}
        for g in scene.groups:
            totals[g.colour, g.shape] = totals.get((g.colour, g.shape), 0) + g.count
        question, answer = qa["existence"]
        colour, shape = question.removeprefix("is there a ").rstrip("?").split(" ")
        assert answer == ("yes" if (colour, shape) in totals else "no") == ("yes" if index % 2 == 0 else "no")
        question, answer = qa["counting"]
        colour, plural = question.removeprefix("how many ").removesuffix(" are there?").split(" ")
        shape = next(s for s in synthetic.SHAPES if synthetic._PLURAL[s] == plural)
        assert int(answer) == totals[colour, shape]
        if "position" in qa:
            question, answer = qa["position"]
            assert answer in synthetic.REGIONS and any(g.region == answer and g.colour in question
                                                       and g.shape in question for g in scene.groups)
        if "attribute" in qa:
            assert qa["attribute"][1] in synthetic.COLOURS + synthetic.SHAPES + synthetic.SIZES


def test_vqa_split_covers_every_type_with_balanced_existence():
    data = synthetic_vqa("val", 40, 32)
    assert data.types() == list(QUESTION_TYPES) and data.images.shape == (40, 3, 32, 32)
    existence = [a for _, t, _, a in data.questions if t == "existence"]
    assert existence.count("yes") == existence.count("no") == 20
    assert synthetic_vqa("val", 40, 32).questions == data.questions  # reproducible


def test_normalised_exact_match():
    assert normalize_answer(" The Top-Left. ") == "top left" and normalize_answer("three") == "3"
    questions = [(0, "counting", "q", "2"), (0, "counting", "q", "1"), (1, "existence", "q", "yes")]
    result = score(questions, ["two", "3", "Yes."])
    assert result["accuracy"] == {"counting": 0.5, "existence": 1.0} and result["overall"] == pytest.approx(2 / 3)


def test_pooled_tower_gives_the_encoders_pooled_feature(tmp_path):
    model, _ = tiny_checkpoint(tmp_path / "ckpt")
    tower = PooledTower(AutoModel.from_pretrained(export_checkpoint(tmp_path / "ckpt", "hf", tmp_path / "hf")), True)
    x = images()
    with torch.no_grad():
        out = tower(x)
        assert out.hidden_states[-1].shape == (2, 1, 32)
        assert max_diff(out.hidden_states[-1][:, 0], model.encoder.forward_tokens(x)[0]) <= TOL


def test_eval_vlm_end_to_end_vs_random(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt")
    assert main(["eval", "vlm", "--checkpoint", str(tmp_path / "ckpt"), "--vs-random", *SMALL]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["task"], result["lm"], result["tokens"]) == ("synthetic-vqa", "tiny", "patch")
    for name in ("trained", "random_init"):
        run = result[name]
        assert list(run["accuracy"]) == list(QUESTION_TYPES) and 0 <= run["overall"] <= 1
        assert (run["export"], run["image_tokens"]) == ("hf", 16)  # 32 px / 8 px patches, CLS dropped
        assert run["stage1"]["steps"] == 2 and run["stage2"]["steps"] == 3
    assert sum(result["trained"]["num_questions"].values()) == result["num_test_questions"]


def test_eval_vlm_pooled_token_with_a_local_lm_directory(tmp_path, capsys):
    """--lm PATH: a Hugging Face causal LM directory (here a tiny Llama saved with its tokenizer)."""
    tiny_checkpoint(tmp_path / "ckpt", pre_norm=True)  # exported as CLIPVisionModel
    tokenizer = word_tokenizer(["what is this item ? a photo of a red square describe the image ."])
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    assert main(["eval", "vlm", "--checkpoint", str(tmp_path / "ckpt"), "--lm", str(tmp_path / "lm"),
                 "--tokens", "pooled", *SMALL]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["lm"], result["tokens"]) == (str(tmp_path / "lm"), "pooled")
    assert (result["trained"]["export"], result["trained"]["image_tokens"]) == ("hf-clip", 1)


def test_eval_vlm_bad_lm_is_one_line(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt")
    assert main(["eval", "vlm", "--checkpoint", str(tmp_path / "ckpt"), "--lm", str(tmp_path / "none"), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not 'tiny' nor a local Hugging Face model directory" in err


def test_eval_vlm_lm_with_a_pickle_that_needs_code_is_one_line_and_runs_nothing(tmp_path, capsys):
    """A pytorch_model.bin whose unpickling would run a command: refused by weights_only loading, one line."""
    import os

    import torch

    tiny_checkpoint(tmp_path / "ckpt")
    lm = tmp_path / "lm"
    tokenizer = word_tokenizer(["what is this item ? a photo of a red square describe the image ."])
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(lm)
    tokenizer.save_pretrained(lm)
    (lm / "model.safetensors").unlink()

    class Planted:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    torch.save({"model.embed_tokens.weight": Planted()}, lm / "pytorch_model.bin")
    assert main(["eval", "vlm", "--checkpoint", str(tmp_path / "ckpt"), "--lm", str(lm), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a pickle that needs code to load" in err, err
    assert "weights_only=False" not in err and not (tmp_path / "ran").exists()


def test_eval_vlm_more_images_than_memory_holds_is_one_line_before_any_is_made(tmp_path, capsys):
    from openvision2.errors import UserError
    from openvision2.vlm.evaluate import check_fits

    check_fits(100, 32, memory_bytes=2 * 100 * (15 * 32 * 32 + 1024))  # just fits in half
    with pytest.raises(UserError, match="101 training and held-out images at 32 px"):
        check_fits(101, 32, memory_bytes=2 * 100 * (15 * 32 * 32 + 1024))
    tiny_checkpoint(tmp_path / "ckpt")
    assert main(["eval", "vlm", "--checkpoint", str(tmp_path / "ckpt"), *SMALL, "--train-images", "100000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "over half of this machine's" in err, err


def test_stage1_train_lm_trains_the_language_model_in_stage_1(tmp_path, capsys):
    """--stage1-train-lm: the same first stage-1 step, then a different loss, since the LM moved too."""
    tiny_checkpoint(tmp_path / "ckpt")
    stage1 = {}
    for flag in ([], ["--stage1-train-lm"]):
        assert main(["eval", "vlm", "--checkpoint", str(tmp_path / "ckpt"), *SMALL, *flag]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["stage1_train_lm"] is bool(flag)
        stage1[bool(flag)] = result["trained"]["stage1"]
    assert stage1[True]["first_loss"] == pytest.approx(stage1[False]["first_loss"], rel=1e-6)
    assert stage1[True]["last_loss"] != pytest.approx(stage1[False]["last_loss"], rel=1e-6)


def _vlm_options(*argv):
    from openvision2.cli import build_parser
    from openvision2.vlm.command import options_from

    return options_from(build_parser().parse_args(["eval", "vlm", "--checkpoint", "ckpt", *argv]))


def test_vlm_presets_pin_their_protocols_and_flags_override_them():
    """quick = LLaVA-1.5's shape; thorough = the setting measured in docs/BENCHMARKS.md to separate every
    question type (stage 2 at lr 1e-3 leaves existence at chance there, 3e-4 does not)."""
    quick = _vlm_options()
    assert (quick.tokens, quick.stage1_train_lm, quick.stage1_steps, quick.stage2_steps) == ("patch", False, 150, 600)
    assert (quick.train_images, quick.test_images, quick.stage1_lr, quick.stage2_lr) == (2000, 300, 1e-3, 1e-3)
    thorough = _vlm_options("--preset", "thorough")
    assert (thorough.tokens, thorough.stage1_train_lm, thorough.stage1_steps, thorough.stage2_steps) == \
        ("pooled", True, 300, 6000)
    assert (thorough.train_images, thorough.test_images, thorough.stage1_lr, thorough.stage2_lr) == \
        (10000, 600, 1e-3, 3e-4)
    assert (thorough.lm, thorough.batch_size, thorough.seed) == ("tiny", 32, 0)
    mine = _vlm_options("--preset", "thorough", "--no-stage1-train-lm", "--tokens", "patch", "--stage2-lr", "5e-4",
                        "--seed", "3")
    assert (mine.stage1_train_lm, mine.tokens, mine.stage2_lr, mine.seed, mine.stage2_steps) == \
        (False, "patch", 5e-4, 3, 6000)
    assert _vlm_options("--stage1-train-lm").stage1_train_lm is True


def test_vlm_json_records_the_preset_and_every_option(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt")
    assert main(["eval", "vlm", "--checkpoint", str(tmp_path / "ckpt"), "--preset", "thorough", "--tokens", "patch",
                 *SMALL]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["preset"] == "thorough" and result["tokens"] == "patch"
    chosen = {k: result["options"][k] for k in ("tokens", "stage1_train_lm", "stage2_lr", "train_images", "stage2_steps")}
    assert chosen == {"tokens": "patch", "stage1_train_lm": True, "stage2_lr": 3e-4, "train_images": 24,
                      "stage2_steps": 3}
    assert result["trained"]["stage1"]["steps"] == 2 and result["trained"]["image_tokens"] == 16


@pytest.mark.parametrize("flag, value, message", [
    ("--train-images", "0", "--train-images must be >= 1"),
    ("--stage2-steps", "-1", "--stage2-steps must be >= 0, got -1"),
    ("--stage1-lr", "0", "--stage1-lr must be > 0, got 0.0"),
    ("--device", "gpu", "unknown --device 'gpu': use cpu or cuda"),
])
def test_vlm_bad_settings_are_one_line(tmp_path, capsys, flag, value, message):
    tiny_checkpoint(tmp_path / "ckpt")
    assert main(["eval", "vlm", "--checkpoint", str(tmp_path / "ckpt"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_eval_on_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt")
    assert main(["eval", "probe", "--checkpoint", str(tmp_path / "ckpt"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torch sees no GPU here: use --device cpu" in err, err


def test_eval_vlm_lm_directory_without_weights_is_one_line(tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt")
    tokenizer = word_tokenizer(["what is this item ?"])
    tokenizer.save_pretrained(tmp_path / "lm")
    LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2).save_pretrained(tmp_path / "lm")  # no weights file
    assert main(["eval", "vlm", "--checkpoint", str(tmp_path / "ckpt"), "--lm", str(tmp_path / "lm"), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot load its causal LM" in err, err
