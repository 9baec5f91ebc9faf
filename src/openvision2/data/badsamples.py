"""Bad input is skipped, counted by reason and logged once per reason per shard: never fatal, never silent."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("openvision2.data")

# Every reason a sample (or a whole shard) can be skipped. The counters use these names as keys, so a
# training run's metrics show e.g. {"corrupt_image": 3, "missing_caption": 1}.
REASONS = (
    "unreadable_shard",  # the shard file cannot be opened or is not a tar archive
    "truncated_tar",  # the archive ends in the middle of a member; the complete samples before it are kept
    "empty_shard",  # a valid tar archive without any member
    "missing_image",  # a key with no jpg/jpeg/png/webp member
    "not_image",  # the image member is not an image file PIL recognises
    "corrupt_image",  # a recognised image that fails to decode (truncated or damaged data)
    "too_many_pixels",  # width x height over the pixel limit (decompression bomb)
    "missing_caption",  # no caption field (no txt member, no json, or the json lacks the key)
    "empty_caption",  # the caption is empty or only whitespace
    "bad_text",  # the caption is not UTF-8, or the json member is not valid JSON
    "missing_alt_text",  # alt_caption_key is set (OpenVision 1) and the sample has no such field, or it is empty
    "missing_label",  # (labelled evaluation sets) the json member has no integer label / class name
    "long_caption",  # NOT skipped: a caption over MAX_CAPTION_CHARS, kept cut to that length
)
KEPT = ("long_caption",)  # reasons counted for a sample that is still used


class BadSample(Exception):
    """Raised while reading one sample; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class BadSampleLog:
    """Counts skipped samples by reason; logs the first of each reason in each shard (with its key)."""

    def __init__(self, counts: dict[str, int] | None = None, logged: set | None = None):
        self.counts: Counter[str] = Counter(counts or {})
        # (shard, reason) pairs already logged; shared by the logs of one reader's batches
        self._logged: set[tuple[str, str]] = set() if logged is None else logged

    def record(self, reason: str, shard: str, key: str = "", detail: str = "") -> None:
        self.counts[reason] += 1
        if (shard, reason) not in self._logged:
            self._logged.add((shard, reason))
            where = f"{shard}:{key}" if key else shard
            log.warning("%s %s (%s)%s; further %s in this shard are counted, not logged",
                        "kept" if reason in KEPT else "skipped", where, reason, f": {detail}" if detail else "",
                        reason, extra={"once": (shard, reason)})  # once per run, whichever worker meets it

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)
