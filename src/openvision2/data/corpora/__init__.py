"""Corpora in the formats people have, turned into WebDataset shards by `ov2 shards`.

Each input format is a small module whose `rows(...)` yields one dict per sample:
    {"image": bytes or None, "path": image file or None, "captions": [str, ...], "meta": {...}, "where": str}
(`where` names the row in a skip message). encode.write_corpus checks and stores them, in parallel.
"""
