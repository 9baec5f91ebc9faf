"""The chunked vocabulary head + cross-entropy (models/chunked_ce.py): the same loss and gradients
as the full logits, on both paths (compacting: the CPU's; static: CUDA's, its chunk body run eagerly
here), for the function and for every method with a vocabulary head; which device gets which path; and
that the static path never reads a value back to the host."""

import warnings

import pytest
import torch

import openvision2.models.chunked_ce as chunked_ce
from openvision2.models import ModelConfig, OpenVision2
from openvision2.models.cappa import CapPa, CapPaConfig
from openvision2.models.chunked_ce import (CUDA_CHUNK_TOKENS, DEFAULT_CHUNK_TOKENS, LossPath, chunk_nll_and_grad,
                                           loss_path, vocab_nll)
from openvision2.models.openvision1 import OpenVision1, OpenVision1Config

VOCAB = 97
PATHS = ("compacting", "static")


def _path(name, chunk):
    """The CPU's path, or CUDA's with its chunk body uncompiled, at `chunk` tokens a chunk."""
    return LossPath(name, chunk, chunk_nll_and_grad if name == "static" else None, "test")


def _loss_and_grads(chunk, hidden, weight, targets, mask, path="compacting"):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    nll_sum, num_tokens = vocab_nll(hidden, weight, targets, mask, chunk, path=_path(path, chunk))
    (nll_sum * 0.37).backward()  # a scale other than 1, as the loop's loss weight and token mean apply
    return nll_sum.detach(), num_tokens, hidden.grad, weight.grad


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
def test_chunked_equals_full_logits_in_fp32(chunk, path):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(3, 11, 24, generator=g), torch.randn(VOCAB, 24, generator=g) * 0.3
    targets = torch.randint(0, VOCAB, (3, 11), generator=g)
    mask = torch.rand(3, 11, generator=g) > 0.3
    full = _loss_and_grads(0, hidden, weight, targets, mask)
    chunked = _loss_and_grads(chunk, hidden, weight, targets, mask, path)
    assert int(chunked[1]) == int(full[1]) == int(mask.sum())
    for a, b in zip(full, chunked):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    assert hidden.shape == chunked[2].shape and not chunked[2][~mask].any()  # masked tokens get no gradient


@pytest.mark.parametrize("path", PATHS)
def test_no_autograd_gives_the_loss_alone_and_an_empty_mask_gives_zero(path):
    hidden, weight = torch.randn(2, 5, 8), torch.randn(VOCAB, 8)
    targets, mask = torch.randint(0, VOCAB, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(vocab_nll(hidden, weight, targets, mask, 3, path=_path(path, 3))[0],
                                   vocab_nll(hidden, weight, targets, mask, 0)[0], rtol=1e-6, atol=1e-6)
    empty = _loss_and_grads(4, hidden, weight, targets, torch.zeros(2, 5, dtype=torch.bool), path)
    assert float(empty[0]) == 0.0 and int(empty[1]) == 0 and not empty[2].any() and not empty[3].any()


@pytest.mark.parametrize("path", PATHS)
def test_bf16_autocast_stays_close_to_the_full_logits(path):
    hidden, weight = torch.randn(4, 9, 32), torch.randn(VOCAB, 32) * 0.2
    targets, mask = torch.randint(0, VOCAB, (4, 9)), torch.ones(4, 9, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = _loss_and_grads(0, hidden, weight, targets, mask)
        chunked = _loss_and_grads(7, hidden, weight, targets, mask, path)
    for a, b in zip(full, chunked):
        torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-2)


def _tiny_models(chunk):
    common = dict(encoder="mu/8", decoder="mu", image_size=32, vocab_size=VOCAB, text_len=12, logits_chunk=chunk)
    return {
        "openvision2": OpenVision2(ModelConfig(**common)),
        "cappa": CapPa(CapPaConfig(**common, text_pos="learned", parallel_prob=0.5, mask_id=3)),
        "openvision1": OpenVision1(OpenVision1Config(**common, text_encoder="mu", alt_text_len=8)),
    }


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["openvision2", "cappa", "openvision1"])
def test_every_method_has_the_same_loss_and_gradients_with_and_without_chunks(method, path, monkeypatch):
    monkeypatch.setattr(chunked_ce, "loss_path", lambda device, chunk: _path(path, chunk))
    g = torch.Generator().manual_seed(1)
    captions = torch.randint(5, VOCAB, (4, 12), generator=g)
    captions[0, 7:] = 0  # pads: masked out of the loss
    inputs = {"images": torch.randn(4, 3, 32, 32, generator=g), "captions": captions}
    if method == "openvision1":
        inputs |= {"alt_captions": torch.randint(5, VOCAB, (4, 8), generator=g),
                   "sub_captions": torch.randint(5, VOCAB, (4, 8), generator=g)}
    results = []
    for chunk in (0, 5):
        torch.manual_seed(0)
        model = _tiny_models(chunk)[method]
        torch.manual_seed(2)  # the same kept tokens / parallel examples in both runs
        out = model(**inputs)
        (out["loss"] * 2).backward()
        results.append((out["loss"].detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_full, grads_full), (loss_chunked, grads_chunked) = results
    torch.testing.assert_close(loss_chunked, loss_full, rtol=1e-6, atol=1e-6)
    assert grads_full.keys() == grads_chunked.keys() and "decoder.head.weight" in grads_full
    for name, grad in grads_full.items():  # to 1e-6 of each tensor's scale: fp32 sums in another order
        assert (grads_chunked[name] - grad).abs().max() <= 1e-6 * (1 + grad.abs().max()), name


def test_the_cpu_gets_the_compacting_path_and_cuda_the_static_compiled_one():
    cpu = loss_path(torch.device("cpu"))
    assert (cpu.name, cpu.chunk_tokens, cpu.body) == ("compacting", DEFAULT_CHUNK_TOKENS, None)
    assert loss_path(torch.device("cpu"), 64).chunk_tokens == 64  # logits_chunk sets the CPU's chunk
    assert DEFAULT_CHUNK_TOKENS == 512 and CUDA_CHUNK_TOKENS == 4096
    cuda = loss_path(torch.device("cuda"), 64)  # torch.compile is lazy: nothing runs on a GPU here
    assert (cuda.name, cuda.chunk_tokens) == ("static", CUDA_CHUNK_TOKENS)
    assert isinstance(cuda.body, chunked_ce.CompiledBody) and "compiled" in cuda.reason


def test_cuda_without_triton_runs_the_chunk_body_eagerly_and_says_why(monkeypatch):
    import torch.utils._triton

    monkeypatch.setattr(torch.utils._triton, "has_triton_package", lambda: False)
    chunked_ce._warn_once.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = loss_path(torch.device("cuda"))
    assert (path.name, path.body) == ("static", chunk_nll_and_grad)
    assert [str(w.message) for w in caught] == [f"vocabulary loss: {path.reason}"]
    assert "without Triton" in path.reason and "install the triton" in path.reason


def test_the_static_path_reads_nothing_back_to_the_host():
    """On meta tensors there are no values: an .item(), a nonzero(), a bool() or a .tolist() raises there,
    as each would wait for the GPU on CUDA. The static path runs forward and backward (bf16 matmuls, the
    fp32 head gradient accumulated in place); the compacting path's nonzero() is caught."""
    hidden = torch.empty(3, 11, 24, device="meta", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.empty(VOCAB, 24, device="meta", requires_grad=True)
    targets = torch.empty(3, 11, device="meta", dtype=torch.long)
    mask = torch.empty(3, 11, device="meta", dtype=torch.bool)
    nll_sum, num_tokens = vocab_nll(hidden, weight, targets, mask, 5, path=_path("static", 5))
    (nll_sum * 0.37).backward()
    assert hidden.grad.shape == hidden.shape and weight.grad.dtype == torch.float32
    with pytest.raises(NotImplementedError, match="nonzero"):
        vocab_nll(hidden, weight, targets, mask, 5, path=_path("compacting", 5))


def test_the_chunk_body_compiles_whole_and_gives_the_same_values():
    """fullgraph=True: a graph break (a host read, a data-dependent shape) would raise. aot_eager traces
    what Inductor compiles on CUDA without generating code (seconds here, where Inductor takes ~50 s)."""
    g = torch.Generator().manual_seed(3)
    logits, targets = torch.randn(7, VOCAB, generator=g), torch.randint(0, VOCAB, (7,), generator=g)
    mask = torch.rand(7, generator=g) > 0.3
    compiled = torch.compile(chunk_nll_and_grad, fullgraph=True, backend="aot_eager")
    for need_grad in (True, False):
        got, want = compiled(logits, targets, mask, need_grad), chunk_nll_and_grad(logits, targets, mask, need_grad)
        torch.testing.assert_close(got[0], want[0])
        assert (got[1] is None) == (want[1] is None) == (not need_grad)
        if need_grad:
            torch.testing.assert_close(got[1], want[1])
            assert not got[1][~mask].any()


def test_a_failed_compilation_falls_back_to_the_eager_body_once_and_says_why():
    logits, targets = torch.randn(4, VOCAB), torch.randint(0, VOCAB, (4,))
    mask = torch.tensor([True, False, True, True])
    calls = []

    def cannot_compile(*args):
        calls.append(args)
        raise torch._dynamo.exc.BackendCompilerFailed(cannot_compile, RuntimeError("no C compiler found"), None)

    body = chunked_ce.CompiledBody()
    body.compiled = cannot_compile
    chunked_ce._warn_once.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = body(logits, targets, mask, True), body(logits, targets, mask, True)
    want = chunk_nll_and_grad(logits, targets, mask, True)
    for got in (first, second):
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
    assert len(calls) == 1 and len(caught) == 1  # not retried, said once
    assert "torch.compile failed" in str(caught[0].message) and "no C compiler found" in str(caught[0].message)

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    body = chunked_ce.CompiledBody()
    body.compiled = out_of_memory
    with pytest.raises(torch.OutOfMemoryError):  # only a failed compilation falls back
        body(logits, targets, mask, True)
