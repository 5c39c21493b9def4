"""The official SuperNI metric: exact match and ROUGE-L, max over references, x100.

Follows allenai/natural-instructions ``eval/automatic/evaluation.py`` (and Tk-Instruct
``src/compute_metrics.py``) for the default English track:

* exact match: lowercase, delete every ``string.punctuation`` character, collapse whitespace,
  compare strings (articles are *not* removed, unlike SQuAD);
* ROUGE-L: ``rouge_score.RougeScorer(["rougeL"], use_stemmer=True)`` F-measure; its tokenizer
  lowercases, maps ``[^a-z0-9]+`` to spaces and Porter-stems tokens longer than 3 characters;
* per instance the max over the references; per task / category / overall the mean over
  instances, times 100. A missing prediction counts as "".

Per-instance scores here are already x100, so a plain mean gives the official number.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

_PUNCTUATION = frozenset(string.punctuation)


@lru_cache(maxsize=1)
def _scorer() -> Any:
    # Built once: constructing a RougeScorer with the stemmer is not free, and it is stateless.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace (the SuperNI exact-match normaliser)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (0..1) of one prediction against one reference."""
    return float(_scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure)


def score_instance(prediction: str | None, references: Sequence[str]) -> dict[str, float]:
    """Official per-instance scores (x100): max over references of exact match and ROUGE-L."""
    if not references:
        raise ValueError("an instance needs at least one reference")
    prediction = prediction or ""
    return {
        "exact_match": 100.0 * max(exact_match(prediction, ref) for ref in references),
        "rougeL": 100.0 * max(rouge_l(prediction, ref) for ref in references),
    }


def mean(values: Iterable[float]) -> float:
    """Mean of per-instance scores; NaN for no values (so an empty group is never a 0)."""
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def category_key(category: str) -> str:
    """SuperNI's group key: ``"_".join(category.lower().split())``."""
    return "_".join(category.lower().split())


def compute_metrics(
    predictions: Sequence[str | None],
    references: Sequence[Sequence[str]],
    groups: Sequence[str] | None = None,
) -> dict[str, float]:
    """Corpus-level metrics like ``compute_grouped_metrics`` in the official code.

    Returns ``exact_match`` and ``rougeL`` over all instances and, when ``groups`` is given,
    ``{metric}_for_{group}`` for each group, all rounded to 4 decimals like the original.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    scores = [score_instance(p, r) for p, r in zip(predictions, references, strict=True)]
    result = {
        metric: round(mean(s[metric] for s in scores), 4) for metric in ("exact_match", "rougeL")
    }
    if groups is not None:
        if len(groups) != len(scores):
            raise ValueError(f"{len(groups)} group labels for {len(scores)} instances")
        by_group: dict[str, list[dict[str, float]]] = {}
        for group, score in zip(groups, scores, strict=True):
            by_group.setdefault(group, []).append(score)
        for group, group_scores in by_group.items():
            for metric in ("exact_match", "rougeL"):
                result[f"{metric}_for_{group}"] = round(mean(s[metric] for s in group_scores), 4)
    return result
