"""Fast ROUGE-L near-duplicate filter for Self-Instruct instruction generation.

Self-Instruct drops a newly generated instruction when its ROUGE-L F-measure (google-research
``rouge_score``, ``RougeScorer(["rougeL"], use_stemmer=False)``) against ANY instruction already
in the pool (seeds included) is above 0.7. Scoring every candidate against the whole pool with
``rouge_score`` is quadratic and, because ``RougeScorer.score`` re-tokenizes both strings and
fills a Python DP table on every call, very slow.

:class:`SimilarityIndex` gives exactly the same keep/drop decisions, much faster:

* every text is tokenized once, with ``rouge_score``'s own ``DefaultTokenizer`` (so the token
  definition can never drift from the metric), and tokens are mapped to integer ids;
* an inverted index (token id -> pool items containing it, with their counts) yields, for a
  query, the multiset token overlap with every pool item in a few vectorised numpy operations;
* since ``LCS <= overlap``, ``F = 2 * LCS / (m + n) <= 2 * overlap / (m + n)``; only pool items
  whose bound can exceed the threshold get an LCS computation;
* the LCS is the bit-parallel algorithm of Allison-Dix / Hyyro on Python ints (one add, a few
  bit operations per token of the pool item);
* the final score of each surviving candidate is computed with ``rouge_score``'s own floating
  point formula, so borderline cases (e.g. exactly 0.7) are decided identically.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
from rouge_score.tokenizers import DefaultTokenizer

__all__ = ["DEFAULT_THRESHOLD", "SimilarityIndex", "lcs_length", "rouge_l_fmeasure"]

#: Self-Instruct's cut-off: an instruction is dropped if ROUGE-L F > 0.7 with any pool item.
DEFAULT_THRESHOLD = 0.7

# Safety margin for pruning with the float upper bound 2*overlap/(m+n). rouge_score's float F
# differs from the exact rational 2*LCS/(m+n) by a few ulps at most (~1e-16), so a margin of 1e-9
# can never prune an item whose rouge_score F exceeds the threshold (or the current best).
_PRUNE_EPS = 1e-9

_INITIAL_CAPACITY = 8


def rouge_l_fmeasure(lcs: int, target_len: int, prediction_len: int) -> float:
    """ROUGE-L F-measure from an LCS length, bit-for-bit as ``rouge_score`` computes it.

    Mirrors ``rouge_scorer._score_lcs`` + ``scoring.fmeasure``: precision = lcs / len(prediction),
    recall = lcs / len(target), F = 2 * p * r / (p + r), and 0 if either side has no tokens.
    We reproduce this float expression (not the algebraically equal 2*lcs/(m+n)) because the two
    can differ in the last bit, which matters for scores lying exactly on the threshold.
    """
    if target_len == 0 or prediction_len == 0:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _match_masks(tokens: Iterable[int]) -> dict[int, int]:
    """Bit mask per token id: bit i is set iff ``tokens[i]`` is that token (Hyyro's PM table)."""
    masks: dict[int, int] = {}
    for i, tok in enumerate(tokens):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def _lcs_bitparallel(masks: dict[int, int], n: int, other: Iterable[int]) -> int:
    """LCS length between the sequence that ``masks`` encodes (length ``n``) and ``other``.

    Hyyro's bit-parallel recurrence: ``V`` starts as n one-bits; for each token ``t`` of
    ``other``, ``U = V & PM[t]; V = (V + U) | (V - U)``. The LCS length is the number of zero bits
    among the low n bits of ``V``. Tokens absent from ``masks`` leave ``V`` unchanged (U = 0), so
    they are skipped. Carries above bit n never flow back down, so we only mask at the end.
    """
    full = (1 << n) - 1
    v = full
    get = masks.get
    for tok in other:
        m = get(tok)
        if m:
            u = v & m
            v = (v + u) | (v - u)
    return n - (v & full).bit_count()


def lcs_length(a: Iterable[object], b: Iterable[object]) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel).

    A convenience for callers and tests; the index itself uses integer token ids.
    """
    seq_a = list(a)
    ids: dict[object, int] = {}
    a_ids = [ids.setdefault(tok, len(ids)) for tok in seq_a]
    b_ids = [ids.get(tok, -1) for tok in b]
    return _lcs_bitparallel(_match_masks(a_ids), len(a_ids), b_ids)


class _Postings:
    """Growable (pool item id, token count) arrays for one token id."""

    __slots__ = ("counts", "items", "size")

    def __init__(self) -> None:
        self.items = np.empty(_INITIAL_CAPACITY, dtype=np.int64)
        self.counts = np.empty(_INITIAL_CAPACITY, dtype=np.int64)
        self.size = 0

    def append(self, item: int, count: int) -> None:
        if self.size == self.items.shape[0]:
            # Amortised O(1) growth; arrays (not Python lists) so queries need no conversion.
            self.items = np.resize(self.items, 2 * self.size)
            self.counts = np.resize(self.counts, 2 * self.size)
        self.items[self.size] = item
        self.counts[self.size] = count
        self.size += 1


class _Query:
    """A tokenized query: its length, known token id counts and LCS match masks."""

    __slots__ = ("counts", "known_ids", "masks", "n", "tokens")

    def __init__(self, tokens: list[str], vocab: dict[str, int]) -> None:
        self.tokens = tokens
        self.n = len(tokens)
        # Tokens never seen in the pool cannot match anything; they still count in n. They are
        # given id -1 (never present in any pool item) so that positions are preserved.
        self.known_ids = [vocab.get(tok, -1) for tok in tokens]
        self.counts = Counter(t for t in self.known_ids if t >= 0)
        self.masks = _match_masks(self.known_ids)
        self.masks.pop(-1, None)


class SimilarityIndex:
    """Pool of instructions answering "is this new text a ROUGE-L near-duplicate?" quickly.

    Decisions and scores are identical to scoring ``new`` against every pool item ``p`` with
    ``RougeScorer(["rougeL"], use_stemmer=False).score(new, p)["rougeL"].fmeasure`` (argument
    order as in Self-Instruct: the new instruction is the target, the pool item the prediction;
    ROUGE-L F is symmetric anyway).

    Example::

        index = SimilarityIndex(threshold=0.7)
        index.extend(seed_instructions)
        for inst in generated:
            if index.add_if_novel(inst):
                kept.append(inst)
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        """Create an empty pool; a text is "too similar" iff some pool item has F > threshold."""
        threshold = float(threshold)
        # ROUGE-L F lies in [0, 1]; a negative threshold would make items with no shared token
        # "too similar", which the overlap pruning (rightly) assumes cannot happen.
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self._tokenizer = DefaultTokenizer(use_stemmer=False)
        self._vocab: dict[str, int] = {}
        self._texts: list[str] = []
        self._items: list[tuple[int, ...]] = []  # token ids of each pool item
        self._lengths = np.empty(_INITIAL_CAPACITY, dtype=np.int64)
        self._postings: dict[int, _Postings] = {}

    # ------------------------------------------------------------------ pool management

    def __len__(self) -> int:
        """Number of pool items (every added text counts, duplicates and empty ones too)."""
        return len(self._items)

    def __getitem__(self, index: int) -> str:
        """The text of pool item ``index`` (in insertion order)."""
        return self._texts[index]

    @property
    def texts(self) -> list[str]:
        """Copy of the pool texts in insertion order."""
        return list(self._texts)

    def tokenize(self, text: str) -> list[str]:
        """``rouge_score``'s tokens for ``text`` (lowercased alphanumeric runs, no stemming)."""
        return self._tokenizer.tokenize(text)

    def add(self, text: str) -> None:
        """Add ``text`` to the pool unconditionally (e.g. a seed instruction)."""
        self._add_tokens(text, self.tokenize(text))

    def extend(self, texts: Iterable[str]) -> None:
        """Add every text in ``texts`` unconditionally, in order."""
        for text in texts:
            self.add(text)

    def add_if_novel(self, text: str) -> bool:
        """Add ``text`` unless it is too similar to the pool; return whether it was added.

        This is one step of Self-Instruct's filtering loop; the text is tokenized only once.
        """
        tokens = self.tokenize(text)
        if self._first_over_threshold(_Query(tokens, self._vocab)) is not None:
            return False
        self._add_tokens(text, tokens)
        return True

    def _add_tokens(self, text: str, tokens: list[str]) -> None:
        item = len(self._items)
        vocab = self._vocab
        ids = tuple(vocab.setdefault(tok, len(vocab)) for tok in tokens)
        self._texts.append(text)
        self._items.append(ids)
        if item == self._lengths.shape[0]:
            self._lengths = np.resize(self._lengths, 2 * item)
        self._lengths[item] = len(ids)
        for tok, count in Counter(ids).items():
            postings = self._postings.get(tok)
            if postings is None:
                postings = self._postings[tok] = _Postings()
            postings.append(item, count)

    # ------------------------------------------------------------------ queries

    def is_too_similar(self, text: str) -> bool:
        """True iff some pool item has ROUGE-L F > threshold with ``text`` (early exit)."""
        return self._first_over_threshold(_Query(self.tokenize(text), self._vocab)) is not None

    def score(self, text: str, index: int) -> float:
        """ROUGE-L F of ``text`` (target) against pool item ``index`` (prediction)."""
        query = _Query(self.tokenize(text), self._vocab)
        return self._score_item(query, index)

    # ------------------------------------------------------------------ internals

    def _score_item(self, query: _Query, item: int) -> float:
        ids = self._items[item]
        if query.n == 0 or not ids:
            return 0.0  # rouge_score: F = 0 when either side has no tokens
        lcs = _lcs_bitparallel(query.masks, query.n, ids)
        return rouge_l_fmeasure(lcs, target_len=query.n, prediction_len=len(ids))

    def _candidates(self, query: _Query, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Pool items sharing a token with the query whose F upper bound is > floor - eps.

        Returns the item ids and their bounds 2 * overlap / (m + n), where overlap is the
        multiset token overlap (sum over tokens of min(count in query, count in item)); the LCS
        can use each shared token at most that many times, so LCS <= overlap <= min(m, n).
        """
        size = len(self._items)
        empty = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        if size == 0 or not query.counts:
            return empty
        item_arrays: list[np.ndarray] = []
        weight_arrays: list[np.ndarray] = []
        for tok, qcount in query.counts.items():
            postings = self._postings[tok]
            items = postings.items[: postings.size]
            item_arrays.append(items)
            counts = postings.counts[: postings.size]
            weight_arrays.append(np.minimum(counts, qcount))
        # One bincount over all postings: items are unique within a posting list, so the sum of
        # per-token minima per item is exactly the multiset overlap.
        overlap = np.bincount(
            np.concatenate(item_arrays), weights=np.concatenate(weight_arrays), minlength=size
        )
        candidates = np.flatnonzero(overlap)
        bounds = 2.0 * overlap[candidates] / (self._lengths[candidates] + query.n)
        keep = bounds > floor - _PRUNE_EPS
        return candidates[keep], bounds[keep]

    def _first_over_threshold(self, query: _Query) -> int | None:
        candidates, bounds = self._candidates(query, floor=self.threshold)
        if candidates.size == 0:
            return None
        # Most promising first, so near-duplicates are found after one or two LCS computations.
        order = np.argsort(-bounds, kind="stable") if candidates.size > 1 else (0,)
        threshold = self.threshold
        for j in order:
            item = int(candidates[j])
            if self._score_item(query, item) > threshold:
                return item
        return None
