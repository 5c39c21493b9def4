"""Report maths on hand-made numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from refine_af.evaluation.report import (
    grouped_scores,
    overall_score,
    paired_bootstrap,
    summarize,
    win_counts,
    write_report,
)


def _records(scores: dict[str, list[float]], category: dict[str, str]) -> list[dict]:
    return [
        {
            "task": task,
            "category": category[task],
            "id": f"{task}-{i}",
            "rougeL": s,
            "exact_match": 100.0 if s == 100.0 else 0.0,
        }
        for task, values in scores.items()
        for i, s in enumerate(values)
    ]


CATEGORY = {"t1": "A", "t2": "A", "t3": "B"}
A = _records({"t1": [100, 50], "t2": [0, 0, 30], "t3": [40]}, CATEGORY)
B = _records({"t1": [50, 50], "t2": [0, 0, 30], "t3": [60]}, CATEGORY)


def test_means_are_over_instances() -> None:
    assert overall_score(A) == pytest.approx(220 / 6)
    assert grouped_scores(A, "category") == pytest.approx({"A": 180 / 5, "B": 40.0})
    assert grouped_scores(A, "task") == pytest.approx({"t1": 75.0, "t2": 10.0, "t3": 40.0})
    summary = summarize({"a": A})["a"]
    assert summary["instances"] == 6 and summary["tasks"] == 3
    assert summary["exact_match"] == pytest.approx(100 / 6)


def test_win_counts_and_share() -> None:
    counts = win_counts({"t1": 75, "t2": 10, "t3": 40}, {"t1": 50, "t2": 10, "t3": 60})
    assert counts == {"wins": 1, "ties": 1, "losses": 1, "tasks": 3}
    stats = paired_bootstrap(A, B, samples=0)
    assert stats["share"] == pytest.approx(1 / 3)
    assert stats["delta"] == pytest.approx((50 - 20) / 6)
    assert all(math.isnan(x) for x in stats["share_ci"])


def test_paired_bootstrap_interval() -> None:
    stats = paired_bootstrap(A, B, samples=2000, seed=0)
    low, high = stats["share_ci"]
    assert 0.0 <= low <= stats["share"] <= high <= 1.0
    dlow, dhigh = stats["delta_ci"]
    assert dlow <= stats["delta"] <= dhigh
    # t2 is identical in both rows in every resample: never a win, so share <= 2/3.
    assert high <= 2 / 3
    # Identical rows: no wins, zero difference, degenerate interval.
    same = paired_bootstrap(A, A, samples=200, seed=0)
    assert same["wins"] == 0 and same["ties"] == 3
    assert same["share_ci"] == [0.0, 0.0] and same["delta_ci"] == [0.0, 0.0]
    # Deterministic for a seed.
    assert paired_bootstrap(A, B, samples=300, seed=5) == paired_bootstrap(A, B, 300, 5)


def test_rows_on_different_instances_are_refused() -> None:
    with pytest.raises(ValueError, match="different instances"):
        paired_bootstrap(A, A[:-1], samples=10)


def test_write_report(tmp_path: Path) -> None:
    path = write_report(
        {"base": B, "tuned": A}, tmp_path, pairs=[("tuned", "base")], bootstrap_samples=100
    )
    text = path.read_text()
    assert "tuned beats base on 1 of 3 tasks (33.3%" in text
    assert "| tuned | 36.67 | 16.67 | 3 | 6 |" in text
    for name in ("overall.png", "categories.png", "delta_tuned_vs_base.png", "report.json"):
        assert (tmp_path / name).is_file()
