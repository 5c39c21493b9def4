"""Self-Instruct's heuristic filters (SPEC section 2), each returning the reason it drops for.

Filters are pure functions of the text so they can be tested one by one; the similarity filter,
which depends on the pool, lives in :mod:`refine_af.similarity`.
"""

from __future__ import annotations

import re
import string

MIN_INSTRUCTION_WORDS = 4  # "3 words or fewer" is dropped
MAX_INSTRUCTION_WORDS = 150
# Tasks a text-only model cannot do; matched as whole words.
UNSUITABLE_WORDS = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
)
_UNSUITABLE = re.compile(
    r"\b(" + "|".join(re.escape(w) for w in UNSUITABLE_WORDS) + r")\b", re.IGNORECASE
)

# Reasons, in the order they are checked; counts are reported under these names.
INSTRUCTION_DROP_REASONS = (
    "cut_off",
    "too_short",
    "too_long",
    "unsuitable_keyword",
    "write_a_program",
    "starts_with_punctuation",
    "starts_with_non_ascii",
    "too_similar",
)


def instruction_drop_reason(text: str, cut_off: bool) -> str | None:
    """Why a generated instruction is dropped, or None to keep it (before the similarity check).

    ``cut_off`` is True when this is the last item of a completion that hit the length limit.
    """
    if cut_off:
        return "cut_off"
    words = text.split()
    if len(words) < MIN_INSTRUCTION_WORDS:
        return "too_short"
    if len(words) > MAX_INSTRUCTION_WORDS:
        return "too_long"
    if _UNSUITABLE.search(text):
        return "unsuitable_keyword"
    if text.lower().startswith("write a program"):
        return "write_a_program"
    if text[0] in string.punctuation:
        return "starts_with_punctuation"
    if not text[0].isascii():
        return "starts_with_non_ascii"
    return None
