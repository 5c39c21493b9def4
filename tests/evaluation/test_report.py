"""Report maths on hand-made numbers: instance-, task- and seed-level bootstraps, controls."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from refine_af.evaluation.report import (
    answer_stats,
    compare_pair,
    grouped_scores,
    overall_score,
    paired_bootstrap,
    summarize,
    task_bootstrap,
    win_counts,
    write_report,
)


def _records(scores: dict[str, list[float]], category: dict[str, str] | None = None) -> list[dict]:
    return [
        {
            "task": task,
            "category": (category or {}).get(task, "C"),
            "id": f"{task}-{i}",
            "prediction": "an answer" if s else "",
            "rougeL": float(s),
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
    assert summary["instances"] == 6 and summary["tasks"] == 3 and summary["runs"] == 1
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


# ---------------------------------------------------------------------------------------------
# Task-level and seed-level intervals.

TEN = [f"t{i}" for i in range(10)]
# Every task has 50 instances with one score each: nothing varies within a task, so resampling
# instances cannot move anything. A wins 5 tasks by 10 points and loses 5 by 10.
FLAT_A = _records({t: [60.0 if i < 5 else 40.0] * 50 for i, t in enumerate(TEN)})
FLAT_B = _records({t: [50.0] * 50 for t in TEN})


def test_instance_interval_narrow_where_task_interval_is_wide() -> None:
    stats = compare_pair([FLAT_A], [FLAT_B], bootstrap_samples=4000, seed=0)
    assert (stats["wins"], stats["losses"], stats["tasks"]) == (5, 5, 10)
    assert stats["share"] == 0.5 and stats["delta"] == pytest.approx(0.0)
    assert stats["intervals"]["instances"] == {"share": [0.5, 0.5], "delta": [0.0, 0.0]}
    # Tasks resampled: wins ~ Binomial(10, 1/2), whose 2.5% and 97.5% quantiles are 2 and 8;
    # the difference is (20 k - 100) / 10 for k wins, so -6 and +6.
    tasks = stats["intervals"]["tasks"]
    assert tasks["share"] == pytest.approx([0.2, 0.8])
    assert tasks["delta"] == pytest.approx([-6.0, 6.0])
    assert "tasks_runs" not in stats["intervals"]  # one run per row: no seed interval


def test_task_bootstrap_weights_the_difference_by_instances() -> None:
    # One task of 90 instances that A wins by 10, one of 10 that A loses by 10.
    a = _records({"big": [60.0] * 90, "small": [40.0] * 10})
    b = _records({"big": [50.0] * 90, "small": [50.0] * 10})
    stats = task_bootstrap([a], [b], samples=0)
    assert stats["delta"] == pytest.approx((90 * 10 - 10 * 10) / 100)
    assert stats["share"] == 0.5


def test_seed_interval_sees_what_the_run_mean_hides() -> None:
    # Run 1 of A beats B by 10 on every task, run 2 loses by 10: the mean over runs ties B
    # everywhere, so the share (and its task interval) is 0; drawing runs shows it could be 1.
    run1 = _records({t: [60.0] * 5 for t in TEN})
    run2 = _records({t: [40.0] * 5 for t in TEN})
    b = _records({t: [50.0] * 5 for t in TEN})
    stats = compare_pair([run1, run2], [b], bootstrap_samples=2000, seed=0)
    assert (stats["wins"], stats["ties"]) == (0, 10)
    assert stats["runs"] == [2, 1]
    assert stats["intervals"]["tasks"]["share"] == [0.0, 0.0]
    assert stats["intervals"]["tasks_runs"]["share"] == [0.0, 1.0]
    low, high = stats["intervals"]["tasks_runs"]["delta"]
    assert low == pytest.approx(-10.0) and high == pytest.approx(10.0)


def test_rows_with_several_runs_average_them() -> None:
    run1 = _records({"t1": [100.0, 0.0], "t2": [50.0]})
    run2 = _records({"t1": [0.0, 0.0], "t2": [50.0]})
    summary = summarize({"row": [run1, run2]})["row"]
    assert summary["runs"] == 2 and summary["instances"] == 3
    assert summary["rougeL"] == pytest.approx((50 + 0 + 50) / 3)
    assert summary["per_task"]["rougeL"] == pytest.approx({"t1": 25.0, "t2": 50.0})
    assert [r["rougeL"] for r in summary["per_run"]] == pytest.approx([50.0, 50 / 3])


def test_answer_stats_count_empty_answers_and_words() -> None:
    records = [
        {"prediction": "", "rougeL": 0.0},
        {"prediction": " \n", "rougeL": 0.0},
        {"prediction": "the cat sat", "rougeL": 30.0},
        {"prediction": "dog", "rougeL": 50.0},
    ]
    stats = answer_stats(records)
    assert stats["empty_share"] == 0.5
    assert stats["rougeL_nonempty"] == pytest.approx(40.0)
    assert stats["words_nonempty"] == pytest.approx(2.0)


def test_write_report(tmp_path: Path) -> None:
    path = write_report(
        {"base": B, "tuned": A}, tmp_path, pairs=[("tuned", "base")], bootstrap_samples=100
    )
    text = path.read_text()
    assert "tuned beats base on 1 of 3 tasks (33.3%)" in text
    # t2's two zeros are empty answers in the hand-made records: 2 of 6.
    assert "| tuned | 1 | 36.67 | 16.67 | 33.3% | 55.00 | 2.0 | 3 | 6 |" in text
    assert "| instances within tasks |" in text and "| tasks |" in text
    assert "tasks and runs" not in text.split("## tuned vs base")[1]
    for name in ("overall.png", "categories.png", "delta_tuned_vs_base.png", "report.json"):
        assert (tmp_path / name).is_file()


def test_write_report_with_runs(tmp_path: Path) -> None:
    run2 = _records({"t1": [50, 50], "t2": [0, 0, 40], "t3": [40]}, CATEGORY)
    path = write_report(
        {"base": B, "tuned": [A, run2]}, tmp_path, pairs=[("tuned", "base")], bootstrap_samples=50
    )
    text = path.read_text()
    assert "| tuned | 2 |" in text and "Per run:" in text
    assert "| tasks and runs |" in text
