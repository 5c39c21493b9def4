"""Tests for refine_af.similarity: the index must agree exactly with rouge_score (the oracle)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, scoring

from refine_af import similarity
from refine_af.similarity import SimilarityIndex, lcs_length, rouge_l_fmeasure

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def oracle(target: str, prediction: str) -> float:
    """Self-Instruct's score: rouge_score rougeL F, new instruction as target."""
    return _SCORER.score(target, prediction)["rougeL"].fmeasure


def oracle_loop(candidates: list[str], threshold: float = 0.7, seeds: tuple = ()) -> list[bool]:
    """The plain Self-Instruct filtering loop with rouge_score; returns keep decisions."""
    pool = list(seeds)
    keep = []
    for text in candidates:
        ok = not any(oracle(text, item) > threshold for item in pool)
        if ok:
            pool.append(text)
        keep.append(ok)
    return keep


def index_loop(candidates: list[str], threshold: float = 0.7, seeds: tuple = ()) -> list[bool]:
    index = SimilarityIndex(threshold)
    index.extend(seeds)
    return [index.add_if_novel(text) for text in candidates]


def check_against_oracle(pool: list[str], query: str, thresholds=(0.7,)) -> None:
    """Every public query of the index must match rouge_score bit for bit."""
    scores = [oracle(query, item) for item in pool]
    for threshold in thresholds:
        index = SimilarityIndex(threshold)
        index.extend(pool)
        assert index.is_too_similar(query) == any(s > threshold for s in scores), threshold
    for i, s in enumerate(scores):
        assert index.score(query, i) == s


# ----------------------------------------------------------------------------- formula / LCS


def test_fmeasure_formula_bit_exact_with_rouge_score() -> None:
    # rouge_score: p = lcs/len(pred), r = lcs/len(target), F = scoring.fmeasure(p, r).
    for m in range(1, 61):
        for n in range(1, 61):
            for lcs in range(min(m, n) + 1):
                expected = scoring.fmeasure(lcs / n, lcs / m)
                assert rouge_l_fmeasure(lcs, target_len=m, prediction_len=n) == expected


def test_fmeasure_empty_sides_are_zero() -> None:
    assert rouge_l_fmeasure(0, 0, 5) == 0.0
    assert rouge_l_fmeasure(0, 5, 0) == 0.0
    assert rouge_l_fmeasure(0, 0, 0) == 0.0
    assert rouge_l_fmeasure(0, 3, 4) == 0.0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 4), max_size=70),
    st.lists(st.integers(0, 4), max_size=70),
)
def test_lcs_matches_rouge_dp_table(a: list[int], b: list[int]) -> None:
    # Lengths up to 80 make the bit vectors span several machine words.
    expected = rouge_scorer._lcs_table(a, b)[-1][-1] if a and b else 0
    assert lcs_length(a, b) == expected
    assert lcs_length(b, a) == expected


def test_lcs_long_sequences() -> None:
    rng = random.Random(7)
    for _ in range(10):
        a = [rng.randrange(6) for _ in range(rng.randint(100, 200))]
        b = [rng.randrange(6) for _ in range(rng.randint(100, 200))]
        assert lcs_length(a, b) == rouge_scorer._lcs_table(a, b)[-1][-1]


# ----------------------------------------------------------------------------- property-based

# A tiny vocabulary (with case, punctuation and non-ASCII noise) makes high ROUGE-L common.
_WORD = st.sampled_from(["a", "b", "c", "d", "the", "The", "A", "x1", "é", "!", "b,", "...", "İ"])
_TEXT = st.lists(_WORD, max_size=14).map(" ".join)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TEXT, max_size=12), _TEXT)
def test_queries_agree_with_rouge_score(pool: list[str], query: str) -> None:
    check_against_oracle(pool, query, thresholds=(0.0, 0.5, 0.7, 1.0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TEXT, max_size=25))
def test_filter_loop_agrees_with_rouge_score(candidates: list[str]) -> None:
    assert index_loop(candidates) == oracle_loop(candidates)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_arbitrary_unicode_text(a: str, b: str) -> None:
    check_against_oracle([a], b)
    check_against_oracle([b], a)


# ----------------------------------------------------------------------------- seeded random


def _mutate(rng: random.Random, words: list[str], vocab: list[str]) -> list[str]:
    words = list(words)
    for _ in range(rng.randint(0, 6)):
        pos = rng.randrange(len(words) + 1)
        op = rng.random()
        if op < 0.4 and words:
            words[min(pos, len(words) - 1)] = rng.choice(vocab)
        elif op < 0.7:
            words.insert(pos, rng.choice(vocab))
        elif words:
            del words[min(pos, len(words) - 1)]
    return words


def _near_duplicate_stream(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(30)] + ["the", "a", "of", "to"] * 5
    texts: list[list[str]] = []
    for _ in range(n):
        if texts and rng.random() < 0.6:
            texts.append(_mutate(rng, rng.choice(texts), vocab))
        else:
            texts.append([rng.choice(vocab) for _ in range(rng.randint(3, 25))])
    return [" ".join(t) for t in texts]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seeded_filter_loop_agrees(seed: int) -> None:
    candidates = _near_duplicate_stream(seed, 120)
    expected = oracle_loop(candidates)
    assert index_loop(candidates) == expected
    # The stream must exercise both branches, or the test would prove little.
    assert 0.2 < sum(expected) / len(expected) < 0.9


def test_seeded_scores_agree() -> None:
    texts = _near_duplicate_stream(3, 60)
    pool, queries = texts[:40], texts[40:]
    for query in queries:
        check_against_oracle(pool, query, thresholds=(0.3, 0.7))


# ----------------------------------------------------------------------------- adversarial


@pytest.mark.parametrize(
    "pool, query",
    [
        ([], "anything at all"),
        ([""], ""),
        (["", "   ", "!!!"], ""),
        (["hello world"], ""),
        ([""], "hello world"),
        (["?!., ;:"], "?!., ;:"),  # punctuation only: no tokens
        (["日本語のテキスト"], "日本語のテキスト"),  # non-ASCII only: no tokens either
        (["naïve café"], "naive cafe"),  # non-ASCII letters split words
        (["İstanbul"], "i stanbul"),  # "İ".lower() is "i" + combining dot
        (["the the the the"], "the"),
        (["the the the the the the the the the the"], "the the the the the the the the"),
        (["a b a b a b a b"], "b a b a b a b a"),
        (["Give me three tips."], "Give me three tips."),  # exact duplicate: F = 1
        (["GIVE ME THREE TIPS"], "give me three tips"),  # case only
        (["give-me_three/tips"], "give me three tips"),  # punctuation as separators
        (["a b c d e f g h i j"], "j i h g f e d c b a"),  # same bag, LCS 1
    ],
)
def test_adversarial_strings(pool: list[str], query: str) -> None:
    check_against_oracle(pool, query, thresholds=(0.0, 0.7, 1.0))


def _with_lcs(m: int, n: int, lcs: int) -> tuple[str, str]:
    """Target of m tokens and prediction of n tokens whose LCS is exactly ``lcs``."""
    target = [f"t{i}" for i in range(m)]
    prediction = target[:lcs] + [f"p{i}" for i in range(n - lcs)]
    return " ".join(target), " ".join(prediction)


# (m, n, lcs) with 2 * lcs / (m + n) == 0.7 exactly, and one token either side.
_AT_THRESHOLD = [(10, 10, 7), (8, 12, 7), (9, 11, 7), (20, 20, 14), (15, 25, 14), (30, 30, 21),
                 (35, 45, 28), (50, 50, 35), (70, 70, 49), (100, 100, 70)]  # fmt: skip


@pytest.mark.parametrize("m, n, lcs", _AT_THRESHOLD)
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_scores_exactly_at_and_around_threshold(m: int, n: int, lcs: int, delta: int) -> None:
    lcs += delta
    target, prediction = _with_lcs(m, n, lcs)
    expected = oracle(target, prediction)
    assert abs(expected - 2 * lcs / (m + n)) < 1e-12  # the construction is what we think
    check_against_oracle([prediction], target, thresholds=(0.7,))
    # Same in the other direction (pool item as target); F is symmetric but check anyway.
    check_against_oracle([target], prediction, thresholds=(0.7,))
    index = SimilarityIndex(0.7)
    index.add(prediction)
    assert index.is_too_similar(target) == (expected > 0.7)
    if delta == 1:
        assert index.is_too_similar(target)
    if delta == -1:
        assert not index.is_too_similar(target)


def test_threshold_exactly_equal_to_score_is_kept() -> None:
    # F == 1.0 for a duplicate; "> threshold" means threshold 1.0 never drops anything.
    index = SimilarityIndex(threshold=1.0)
    assert index.add_if_novel("same text")
    assert index.add_if_novel("same text")
    assert len(index) == 2


# ----------------------------------------------------------------------------- pool behaviour


def test_order_dependence_of_the_pool() -> None:
    # B is close to A and C is close to B, but C is not close to A: the order decides.
    a = "a b c d e f g h i j"
    b = "a b c d e f g h x y"  # F(a, b) = 0.8
    c = "a b c d e f u v x y"  # F(b, c) = 0.8, F(a, c) = 0.6
    assert oracle(b, a) > 0.7 and oracle(c, b) > 0.7 and oracle(c, a) <= 0.7
    for order in ([a, b, c], [a, c, b], [b, a, c], [c, a, b], [c, b, a], [b, c, a]):
        assert index_loop(order) == oracle_loop(order), order
    assert index_loop([a, b, c]) == [True, False, True]
    assert index_loop([b, a, c]) == [True, False, False]


def test_seeds_are_in_the_pool() -> None:
    seeds = ("Give three tips for staying healthy.",)
    candidates = ["Give three tips for staying healthy!", "Write a poem about the sea."]
    assert index_loop(candidates, seeds=seeds) == oracle_loop(candidates, seeds=seeds)
    assert index_loop(candidates, seeds=seeds) == [False, True]


def test_pool_api() -> None:
    index = SimilarityIndex()
    assert len(index) == 0
    assert not index.is_too_similar("hello")
    assert index.add_if_novel("Write a poem about the sea.")
    assert not index.add_if_novel("write a poem about the sea")
    index.add("write a poem about the sea")  # add() is unconditional
    assert len(index) == 2
    assert index[1] == "write a poem about the sea"
    assert index.texts == ["Write a poem about the sea.", "write a poem about the sea"]
    assert index.tokenize("Hello, World!") == ["hello", "world"]


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_threshold_validation(threshold: float) -> None:
    with pytest.raises(ValueError):
        SimilarityIndex(threshold)


# ----------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("seed", [10, 11])
def test_pruning_never_drops_a_true_match(seed: int) -> None:
    """Candidates must include every item over the threshold (checked without early exit)."""
    texts = _near_duplicate_stream(seed, 80)
    pool, queries = texts[:60], texts[60:]
    index = SimilarityIndex(0.7)
    index.extend(pool)
    for query in queries:
        q = similarity._Query(index.tokenize(query), index._vocab)
        scores = [oracle(query, item) for item in pool]
        for floor in (0.0, 0.5, 0.7, 0.9):
            candidates, bounds = index._candidates(q, floor=floor)
            kept = {int(c): float(b) for c, b in zip(candidates, bounds, strict=True)}
            for i, (item, score) in enumerate(zip(pool, scores, strict=True)):
                if score > floor:
                    assert i in kept, (query, item, floor)
                if i in kept:
                    assert kept[i] >= score - 1e-12  # a true upper bound


def test_pruning_does_not_change_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same decisions with pruning disabled (every pool item gets an LCS)."""
    candidates = _near_duplicate_stream(5, 200)
    pruned = index_loop(candidates)

    def no_pruning(self, query, floor):  # every item, bound +inf
        size = len(self)
        return np.arange(size, dtype=np.int64), np.full(size, np.inf)

    monkeypatch.setattr(SimilarityIndex, "_candidates", no_pruning)
    assert index_loop(candidates) == pruned
