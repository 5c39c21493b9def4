"""The official metric against a straightforward use of rouge_score on real references."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from refine_af.evaluation.metric import (
    category_key,
    compute_metrics,
    exact_match,
    normalize_answer,
    score_instance,
)


def _references(shared_data: Path) -> list[dict]:
    return [json.loads(line) for line in (shared_data / "superni_test_references.jsonl").open()]


def test_rouge_l_matches_rouge_score_on_real_references(shared_data: Path) -> None:
    rows = _references(shared_data)
    rng = random.Random(0)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    sample = rng.sample(rows, 300)
    for row in sample:
        # Predictions: another instance's answer, a truncated own answer, and junk.
        other = rng.choice(rows)["references"][0]
        own = row["references"][0]
        for prediction in (other, own[: len(own) // 2], "Output: the answer is", ""):
            expected = 100 * max(
                scorer.score(ref, prediction)["rougeL"].fmeasure for ref in row["references"]
            )
            got = score_instance(prediction, row["references"])["rougeL"]
            assert got == pytest.approx(expected, abs=1e-9)


def test_a_reference_scores_100(shared_data: Path) -> None:
    for row in _references(shared_data)[::97]:
        scores = score_instance(row["references"][-1], row["references"])
        assert scores["exact_match"] == 100.0
        if any(ch.isalnum() for ch in row["references"][-1]):
            assert scores["rougeL"] == pytest.approx(100.0)


def test_exact_match_normalisation() -> None:
    assert normalize_answer("  The  Cat, sat!\n") == "the cat sat"
    assert exact_match("the cat", "Cat") == 0.0  # articles are not removed (SuperNI, not SQuAD)
    assert exact_match("Yes.", "yes") == 1.0
    assert score_instance(None, ["a"]) == {"exact_match": 0.0, "rougeL": 0.0}
    assert score_instance("running", ["runs", "walked"])["rougeL"] == 100.0  # Porter stemming


def test_compute_metrics_groups_and_rounding() -> None:
    result = compute_metrics(
        ["a b", "x", "c"], [["a b c"], ["x"], ["d"]], groups=["g1", "g1", "g2"]
    )
    assert result["exact_match"] == round(100 / 3, 4)
    assert result["rougeL"] == round((80 + 100 + 0) / 3, 4)
    assert result["rougeL_for_g1"] == 90.0
    assert result["exact_match_for_g2"] == 0.0
    assert category_key("Word Analogy") == "word_analogy"
