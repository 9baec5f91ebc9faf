"""The `data` section of a training config: where samples come from and how captions become tokens."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import check_fields, option

DATASETS = ("synthetic", "shards")
TOKENIZERS = ("wordpiece", "bpe")
WORDPIECE_VOCAB = 32000  # OpenVision's BERT WordPiece vocabulary (SPEC §3.1)


@dataclass
class DataConfig:
    dataset: str = option("synthetic", "the embedded synthetic dataset, or WebDataset shards", choices=DATASETS)
    train_samples: int = option(100_000, "size of the embedded dataset's train split", low=1)
    val_samples: int = option(256, "held-out images for the validation loss and the printed captions", low=1)
    num_workers: int = option(1, "data loader worker processes (0: load in the training process)", low=0)
    # --- WebDataset shards (dataset=shards; `ov2 shards` writes them; data/shards.py) ---
    train_shards: str = option("", "training shards: data/train-{000000..000099}.tar, a directory, "
                                   "or weighted a-{0..9}.tar@0.7;b.tar@0.3")
    val_shards: str = option("", "held-out shards: the first val_samples of them, in order, resized")
    caption_key: str = option("txt", "a member (txt) or a json key (re_caption); a list gives one caption per visit")
    alt_caption_key: str = option("", "the alt-text for methods that use one (e.g. org_caption); empty = the caption")
    shuffle_buffer: int = option(10_000, "samples shuffled together (SPEC §4.1 uses 250 000)", low=0)
    sample_with_replacement: bool = option(False, "draw shards at random instead of epoch permutations")
    max_image_pixels: int = option(89_478_485, "larger images are skipped as decompression bombs (PIL's limit)",
                                   low=1)
    # --- tokenizer ---
    tokenizer: str = option("wordpiece", "wordpiece (OpenVision's BERT ids, 32k head) or bpe (fitted to the "
                                         "training captions)", choices=TOKENIZERS)
    tokenizer_path: str = option("", "a BERT vocab.txt / tokenizer.json; empty = the bundled one")
    # the BPE's five special tokens and a few pieces at the least
    bpe_vocab_size: int = option(256, "vocabulary size of the fitted BPE", low=8)

    def validate(self) -> "DataConfig":
        check_fields(self, "")
        return self

    @property
    def expected_vocab_size(self) -> int:
        """The vocabulary size the tokenizer will have, without building it (a BPE may come out smaller)."""
        return WORDPIECE_VOCAB if self.tokenizer == "wordpiece" else self.bpe_vocab_size
