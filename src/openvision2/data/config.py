"""The `data` section of a training config: where samples come from and how captions become tokens."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import check_fields, option

DATASETS = ("synthetic", "shards")
TOKENIZERS = ("wordpiece", "bpe")
WORDPIECE_VOCAB = 32000  # OpenVision's BERT WordPiece vocabulary (DESIGN.md §3.1)


@dataclass
class DataConfig:
    dataset: str = option("synthetic", "the embedded synthetic dataset, or WebDataset shards", choices=DATASETS)
    train_samples: int = option(100_000, "size of the embedded dataset's train split", low=1, high=10**7,
                                high_open=False)
    val_samples: int = option(256, "held-out images for the validation loss and the printed captions", low=1,
                              high=65_536, high_open=False)
    num_workers: int = option(1, "data loader worker processes (0: load in the training process)", low=0, high=256,
                              high_open=False)
    # --- WebDataset shards (dataset=shards; `ov2 shards` writes them; data/shards.py) ---
    train_shards: str = option("", "training shards: data/train-{000000..000099}.tar, a directory, "
                                   "or weighted a-{0..9}.tar@0.7;b.tar@0.3")
    val_shards: str = option("", "held-out shards: the first val_samples of them, in order, resized")
    caption_key: str = option("txt", "a member (txt) or a json key (re_caption); a list gives one caption per visit")
    alt_caption_key: str = option("", "the alt-text for methods that use one (e.g. org_caption); openvision1 on "
                                      "shards needs it, not the caption key; samples without it are bad samples")
    shuffle_buffer: int = option(10_000, "samples shuffled together (DESIGN.md §4.1 uses 250 000)", low=0)
    allow_embedded: bool = option(True, "the paper recipes set false: they refuse the embedded dataset unless asked")
    sample_with_replacement: bool = option(False, "draw shards at random instead of epoch permutations")
    max_image_pixels: int = option(89_478_485, "larger images are skipped as decompression bombs (PIL's limit)",
                                   low=1)
    # --- remote shards (http(s)://, s3://, gs://, hf://, pipe:; data/remote.py): fetched whole into a cache ---
    shard_cache: str = option("", "directory remote shards are fetched into; empty = the system's temporary one")
    shard_read_ahead: int = option(0, "remote shards fetched ahead while the current ones train; 0 = as many as "
                                      "a shuffle group holds", low=0)
    shard_timeout: float = option(60.0, "seconds without progress before a fetch try fails", low=0.0, low_open=True)
    shard_retries: int = option(3, "tries (with backoff) before a remote shard counts as unreadable_shard", low=1)
    shard_deadline: float = option(1800.0, "seconds a whole shard may take per try (a drip-feeding server fails)",
                                   low=0.0, low_open=True)
    shard_max_bytes: int = option(64 << 30, "a remote shard larger than this many bytes is unreadable_shard", low=1)
    shard_storage_options: str = option("", "fsspec options as JSON, e.g. {\"anon\": true} for a public S3 bucket")
    # --- tokenizer ---
    tokenizer: str = option("wordpiece", "wordpiece (OpenVision's BERT ids, 32k head) or bpe (fitted to the "
                                         "training captions)", choices=TOKENIZERS)
    tokenizer_path: str = option("", "a BERT vocab.txt / tokenizer.json; empty = the bundled one")
    # the BPE's five special tokens and a few pieces at the least
    bpe_vocab_size: int = option(256, "vocabulary size of the fitted BPE", low=8, high=2**20, high_open=False)

    def validate(self) -> "DataConfig":
        check_fields(self, "")
        self.storage_options()
        return self

    def storage_options(self) -> dict:
        """shard_storage_options as a dict (a one-line error if it is not a JSON object)."""
        import json

        from ..errors import UserError

        text = self.shard_storage_options.strip()
        try:
            value = json.loads(text) if text else {}
        except ValueError as err:
            raise UserError(f"shard_storage_options is not JSON ({err}): give e.g. '{{\"anon\": true}}'") from None
        if not isinstance(value, dict):
            raise UserError("shard_storage_options must be a JSON object, e.g. '{\"anon\": true}'")
        return value

    @property
    def expected_vocab_size(self) -> int:
        """The vocabulary size the tokenizer will have, without building it (a BPE may come out smaller)."""
        return WORDPIECE_VOCAB if self.tokenizer == "wordpiece" else self.bpe_vocab_size
