"""Zero-shot by caption likelihood, probes, caption metrics, periodic evaluation and `ov2 eval`."""

import json

import pytest
import torch

from openvision2.checkpoint import save_checkpoint
from openvision2.cli import main
from openvision2.data import synthetic
from openvision2.eval.caption_metrics import caption_metrics, cider_bleu, perplexity
from openvision2.eval.periodic import run_evals
from openvision2.eval.probe import attentive_probe, knn_accuracy, linear_probe
from openvision2.eval.tasks import load_task, synthetic_captions
from openvision2.eval.zeroshot import class_scores, prompt_log_likelihoods, topk_accuracy, zero_shot
from openvision2.models import OpenVision2
from openvision2.preprocess import normalize
from openvision2.train.config import TrainConfig


@pytest.fixture
def setup(tiny_model):
    return tiny_model


def teacher_forced(model, tokenizer, image, text):
    pieces = tokenizer.tokenizer.encode(text, add_special_tokens=False).ids
    ids = torch.tensor([[tokenizer.bos_id, *pieces]])
    with torch.no_grad():
        logits = model.decoder(model.visual_prefix(normalize(image[None])), ids[:, :-1])
    return logits.log_softmax(-1).gather(2, ids[:, 1:, None]).sum().item(), len(pieces)


def test_prompt_scores_are_the_teacher_forced_likelihoods(setup):
    model, tokenizer = setup
    task = load_task("synthetic-object", 32, num_train=4, num_test=3)
    prompts = ["a small red circle", "two small blue squares", "a large", "three small white crosses at the top"]
    scores = prompt_log_likelihoods(model, tokenizer, task.test.images, prompts)
    # a one-row memory budget forces one (image, prompt) per forward: same numbers
    chunked = prompt_log_likelihoods(model, tokenizer, task.test.images, prompts, cache_budget_bytes=1, image_batch=2)
    means = prompt_log_likelihoods(model, tokenizer, task.test.images, prompts, reduce="mean")
    torch.testing.assert_close(chunked, scores)
    for i, image in enumerate(task.test.images):
        for j, prompt in enumerate(prompts):
            total, length = teacher_forced(model, tokenizer, image, prompt)
            assert scores[i, j].item() == pytest.approx(total, abs=1e-4)
            assert means[i, j].item() == pytest.approx(total / length, abs=1e-4)


def test_a_thousand_classes_share_one_visual_prefix(setup):
    model, tokenizer = setup
    words = ["red", "green", "blue", "small", "large", "circle", "square", "cross", "top", "left"]
    prompts = [f"{words[i % 10]} {words[i // 10 % 10]} {words[i // 100]}" for i in range(1000)]
    images = load_task("synthetic-object", 32, num_train=4, num_test=2).test.images
    scores = prompt_log_likelihoods(model, tokenizer, images, prompts)
    assert scores.shape == (2, 1000) and torch.isfinite(scores).all()
    for j in (0, 457, 999):
        assert scores[1, j].item() == pytest.approx(teacher_forced(model, tokenizer, images[1], prompts[j])[0], abs=1e-4)


def test_class_scores_sum_prompt_probabilities_and_topk():
    prompt_scores = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.05], [0.4, 0.1, 0.1, 0.1]]))
    scores = class_scores(prompt_scores, torch.tensor([0, 0, 1, 2]), 3)
    torch.testing.assert_close(scores.exp(), torch.tensor([[0.3, 0.3, 0.05], [0.5, 0.1, 0.1]]))
    accuracy = topk_accuracy(torch.tensor([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9]]), torch.tensor([1, 2]), ks=(1, 2))
    assert accuracy == {"top1": 0.5, "top2": 1.0}


def test_task_prompts_begin_the_true_caption():
    """The prompts of an image's class include the beginning of its real caption (the dataset's style)."""
    for name in ("synthetic-object", "synthetic-colour", "synthetic-shape"):
        task = load_task(name, 32, num_train=4, num_test=40)
        assert len(task.classnames) == {"synthetic-object": 30, "synthetic-colour": 6, "synthetic-shape": 5}[name]
        index, checked = 0, 0
        while checked < 40:  # the same single-group val scenes the task holds, in order
            scene = synthetic.make_scene(index, "val")
            index += 1
            if len(scene.groups) != 1:
                continue
            caption = synthetic.describe(scene)
            label = task.test.labels[checked].item()
            assert any(caption.startswith(p + " ") for p in task.prompts[label]), (caption, task.prompts[label])
            assert sum(caption.startswith(p + " ") for c in task.prompts for p in c) == 1
            checked += 1


def test_zero_shot_finds_a_class_the_decoder_was_made_to_prefer(setup):
    """A decoder made to favour one class's word at every position ranks that class first everywhere."""
    model, tokenizer = setup
    task = load_task("synthetic-colour", 32, num_train=4, num_test=10)
    biased = OpenVision2(model.config).eval()
    biased.load_state_dict(model.state_dict())
    green = tokenizer.tokenizer.encode("green", add_special_tokens=False).ids
    with torch.no_grad():  # final LayerNorm outputs its bias e_0 everywhere; only [green]'s logit reads it
        biased.decoder.norm.weight.zero_()
        biased.decoder.norm.bias.zero_()
        biased.decoder.norm.bias[0] = 1.0
        biased.decoder.head.weight[:, 0] = 0.0
        biased.decoder.head.weight[green, 0] = 5.0
    result = zero_shot(biased, tokenizer, task.test.images, torch.full((10,), task.classnames.index("green")),
                       task.prompts)
    assert result["top1"] == 1.0 and set(result["predictions"]) == {task.classnames.index("green")}


def test_linear_and_knn_probes_separate_separable_features():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 3
    labels = torch.arange(200) % 4
    features = centres[labels] + torch.randn(200, 16, generator=generator)
    train, test = slice(0, 150), slice(150, 200)
    assert linear_probe(features[train], labels[train], features[test], labels[test], 4)["accuracy"] > 0.95
    assert knn_accuracy(features[train], labels[train], features[test], labels[test], 4)["accuracy"] > 0.95
    shuffled = labels[torch.randperm(200, generator=generator)]
    assert linear_probe(features[train], shuffled[train], features[test], shuffled[test], 4)["accuracy"] < 0.6


def test_attentive_probe_finds_the_one_informative_token():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(240) % 3
    tokens = torch.randn(240, 6, 8, generator=generator)
    where = torch.randint(0, 6, (240,), generator=generator)  # the informative token sits anywhere
    tokens[torch.arange(240), where, :3] = 0
    tokens[torch.arange(240), where, labels] = 6.0
    tokens[torch.arange(240), where, 3] = 6.0  # a marker the query can find
    result = attentive_probe(tokens[:180], labels[:180], tokens[180:], labels[180:], 3, epochs=40, batch_size=32)
    assert result["accuracy"] > 0.9


def test_caption_metrics(setup):
    model, tokenizer = setup
    references = [["a large red circle at the top."], ["two small blue squares on the left."]]
    perfect = cider_bleu([r[0] for r in references], references, tokenizer="simple")
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["bleu1"] == pytest.approx(1.0, abs=1e-6)
    wrong = cider_bleu(["a large red circle at the top.", "a large red circle at the top."], references, "simple")
    assert wrong["cider"] < perfect["cider"] and wrong["bleu4"] < 1.0
    data = synthetic_captions(6, 32)
    texts = [r[0] for r in data.references]
    with torch.no_grad():
        out = model(normalize(data.images), tokenizer.encode(texts, model.config.text_len))
    assert perplexity(model, tokenizer, data.images, texts, batch_size=4)["perplexity"] == pytest.approx(
        out["loss"].exp().item(), rel=1e-4)
    result = caption_metrics(model, tokenizer, data.images, data.references, scoring_tokenizer="simple")
    assert len(result["predictions"]) == 6 and 0 <= result["cider"] and 0 <= result["bleu4"] <= 1


def test_periodic_evals_return_flat_numbers(setup):
    model, tokenizer = setup
    config = TrainConfig(encoder="mu/8", decoder="mu", image_size=32, text_len=24, eval_images=12,
                         evals="zeroshot,captions,probe")
    metrics = run_evals(model, tokenizer, config.eval, attentive_epochs=2)
    assert set(metrics) == {"zeroshot/top1", "zeroshot/top5", "captions/cider", "captions/bleu4",
                            "captions/perplexity", "captions/exact_match", "captions/repeated_phrase_share",
                            "probe/linear", "probe/attentive", "probe/knn"}
    assert all(isinstance(v, float) for v in metrics.values())
    assert 0 <= metrics["zeroshot/top1"] <= metrics["zeroshot/top5"] <= 1
    assert model.training is False
    assert run_evals(model, tokenizer, config.eval, evals="") == {}


def test_eval_cli_prints_one_json_object(tiny_checkpoint_dir, tmp_path, capsys):
    (tmp_path / "ckpt").symlink_to(tiny_checkpoint_dir)
    assert main(["eval", "zeroshot", "--checkpoint", str(tmp_path / "ckpt"), "--test-images", "6",
                 "--task", "synthetic-colour", "--vs-random", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "synthetic-colour" and result["trained"]["num_classes"] == 6
    assert set(result) == {"task", "reduce", "trained", "random_init", "precision", "precision_asked"}
    assert result["precision_asked"] == "auto" and result["precision"] in ("bf16", "fp32")
    assert main(["eval", "captions", "--checkpoint", str(tmp_path / "ckpt"), "--caption-images", "3", "--decoding", "beam",
                 "--beam-size", "2", "--show", "1", "--json"]) == 0
    assert "cider" in json.loads(capsys.readouterr().out)
    assert main(["eval", "speed", "--checkpoint", str(tmp_path / "ckpt"), "--batch-size", "2", "--new-tokens", "3",
                 "--repeats", "1", "--json"]) == 0
    speed = json.loads(capsys.readouterr().out)
    assert speed["cached"]["tokens_per_s"] > 0 and speed["speedup"] > 0
    assert main(["eval", "zeroshot", "--checkpoint", str(tmp_path / "ckpt"), "--task", "fashion-mnist"]) == 2
    assert "needs --shards" in capsys.readouterr().err


def _write_idx(path, array):
    import struct

    path.write_bytes(struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype("uint8").tobytes())


def test_fashion_mnist_task_from_shards(setup, tmp_path, capsys):
    import numpy as np

    from openvision2.data.fashion_mnist import CLASSES, write_fashion_mnist
    from openvision2.eval.tasks import shard_captions

    source = tmp_path / "idx"
    source.mkdir()
    for stem, count in (("train", 20), ("t10k", 10)):
        labels = np.arange(count) % 10
        _write_idx(source / f"{stem}-images-idx3-ubyte", np.repeat(labels * 25, 28 * 28).reshape(count, 28, 28))
        _write_idx(source / f"{stem}-labels-idx1-ubyte", labels)
    write_fashion_mnist(tmp_path / "shards", source, per_shard=8)
    task = load_task("fashion-mnist", 32, num_train=20, num_test=10, shards=str(tmp_path / "shards"))
    assert task.classnames == list(CLASSES) and len(task.prompts) == 10
    assert task.test.labels.tolist() == list(range(10)) and task.train.labels.tolist() == [i % 10 for i in range(20)]
    assert task.test.images.shape == (10, 3, 32, 32) and task.test.images[3, :, 0, 0].tolist() == [75] * 3
    assert task.prompts[0][0] == "a photo of a t-shirt" and task.prompts[9][0] == "a photo of an ankle boot"
    captions = shard_captions(str(tmp_path / "shards"), 4, 32)
    assert len(captions.references) == 4 and len(captions.references[1]) == 5
    assert "trouser" in captions.references[1][0]
    model, tokenizer = setup
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    assert main(["eval", "probe", "--checkpoint", str(tmp_path / "ckpt"), "--task", "fashion-mnist", "--shards",
                 str(tmp_path / "shards"), "--train-images", "20", "--test-images", "10", "--probes", "knn",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trained"]["num_classes"] == 10
