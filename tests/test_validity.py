"""Reward validity: the statistics, the labelled-file reader, and `refineaf score --labels`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from refine_af import validity
from refine_af.cli import cli
from refine_af.errors import UserError
from refine_af.rewards import REWARDS

GOOD = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "label": "good"},
    {"instruction": "Name a fruit that is red.", "input": "", "output": "Apple", "label": 1},
    {"instruction": "Reverse the word.", "input": "abc", "output": "cba", "label": True},
]
BAD = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "Blue", "label": "bad"},
    {"instruction": "Name a fruit that is red.", "input": "", "output": "Output:", "label": 0},
    {"instruction": "Reverse the word.", "input": "abc", "output": "abc abc", "label": "junk"},
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def brute_force_auc(scores: list[float], labels: list[bool]) -> float:
    items = list(zip(scores, labels, strict=True))
    pairs = [(a, b) for (a, la), (b, lb) in itertools.product(items, items) if la and not lb]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_auc_ranks_perfect_backwards_and_tied() -> None:
    labels = [True, True, False, False]
    assert validity.auc([4, 3, 2, 1], labels) == 1.0
    assert validity.auc([1, 2, 3, 4], labels) == 0.0
    assert validity.auc([1, 1, 1, 1], labels) == 0.5


def test_auc_equals_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, 15).tolist()  # many ties
        labels = rng.integers(0, 2, 15).astype(bool).tolist()
        if len(set(labels)) < 2:
            continue
        assert validity.auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))


def test_pairwise_accuracy_counts_ties_half() -> None:
    assert validity.pairwise_accuracy([2, 1, 3, 5], [1, 2, 3, 0]) == pytest.approx(2.5 / 4)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    labels = np.array([True] * 40 + [False] * 40)
    scores = np.where(labels, 1.0, 0.0) + rng.normal(0, 1.0, 80)

    def statistic(index: np.ndarray) -> float:
        return validity.auc(scores[index], labels[index])

    first = validity.bootstrap_interval(statistic, 80, 300, seed=3)
    assert first == validity.bootstrap_interval(statistic, 80, 300, seed=3)
    assert first is not None
    assert first[0] < validity.auc(scores, labels) < first[1]
    assert first[0] > 0.5  # a real signal: the interval excludes chance


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{**GOOD[0]}, {"prompt": "p", "chosen": "a", "rejected": "b"}], "mixes"),
        ([{k: v for k, v in GOOD[0].items() if k != "label"}, BAD[0]], "has no 'label'"),
        ([GOOD[0], GOOD[1]], "same label"),
        ([GOOD[0], {**BAD[0], "label": "maybe"}], "neither good"),
        ([{"prompt": "p", "chosen": "", "rejected": "b"}], "has no 'chosen'"),
    ],
)
def test_bad_labelled_files_are_one_line_errors(tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validity.read_labelled(write_rows(tmp_path / "labels.jsonl", rows))


def stand_in_overrides(rm: Path, unieval: Path) -> list[str]:
    return [
        f"rl.reward_model={rm}",
        f"rl.evaluator={unieval}",
        "run.device=cpu",
        "run.dtype=float32",
        "rl.scorer_device=cpu",
        "rl.scorer_batch_size=4",
    ]


def test_labels_table_has_every_reward_and_the_combined_one(
    tmp_path: Path, oasst_rm_standin: Path, unieval_standin: Path
) -> None:
    labels = write_rows(tmp_path / "labels.jsonl", GOOD + BAD)
    args = ["score", "-c", "paper", "--labels", str(labels), "--bootstrap", "50"]
    result = CliRunner().invoke(
        cli, [*args, *stand_in_overrides(oasst_rm_standin, unieval_standin)]
    )
    assert result.exit_code == 0, result.output
    assert "6 labelled instances; AUC" in result.output
    table = [line for line in result.output.splitlines() if line.startswith("| ")][1:]
    names = [line.split("|")[1].strip() for line in table]
    assert names == [*REWARDS, "combined"]
    for line in table:
        value = float(line.split("|")[3])
        assert 0.0 <= value <= 1.0


def test_combined_column_is_stage_2s_weighted_sum(
    tmp_path: Path, oasst_rm_standin: Path, unieval_standin: Path
) -> None:
    """The combined reward equals intercept + sum(weight x component) of the config."""
    from refine_af.instance_format import ParsedInstance
    from refine_af.train_config import load_config

    config = load_config("paper", stand_in_overrides(oasst_rm_standin, unieval_standin))
    rows = GOOD + BAD
    values = validity.component_values(
        config,
        [r["instruction"] for r in rows],
        [ParsedInstance(r["input"], r["output"]) for r in rows],
    )
    weights = config.rl.reward_weights
    for i in range(len(rows)):
        expected = config.rl.reward_intercept + sum(
            w * values[name][i] for name, w in weights.items() if w
        )
        assert values["combined"][i] == pytest.approx(expected)


def test_preference_pairs_report_pairwise_accuracy(
    tmp_path: Path, oasst_rm_standin: Path, unieval_standin: Path
) -> None:
    pairs = [
        {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "Blue"},
        {"prompt": "Name a red fruit.", "chosen": "Apple", "rejected": "I like Sundays."},
    ]
    labels = write_rows(tmp_path / "pairs.jsonl", pairs)
    args = ["score", "-c", "paper", "--labels", str(labels), "--bootstrap", "20"]
    result = CliRunner().invoke(
        cli, [*args, *stand_in_overrides(oasst_rm_standin, unieval_standin)]
    )
    assert result.exit_code == 0, result.output
    assert "2 labelled preference pairs; pairwise accuracy" in result.output
    table = [line for line in result.output.splitlines() if line.startswith("| ")][1:]
    assert len(table) == len(REWARDS) + 1
    for line in table:
        assert float(line.split("|")[3]) in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_labels_and_input_together_is_an_error(tmp_path: Path) -> None:
    labels = write_rows(tmp_path / "labels.jsonl", GOOD + BAD)
    result = CliRunner().invoke(
        cli, ["score", "--labels", str(labels), "--input", str(labels), "--output", "x.jsonl"]
    )
    assert result.exit_code == 2
    assert "either --labels" in result.output


def test_weighted_sum_is_stage_2s_formula_and_needs_every_weighted_value() -> None:
    values = {"a": [1.0, 2.0, None], "b": [0.5, None, 1.0]}
    assert validity.weighted_sum(values, {"a": 2.0, "b": -1.0}, 0.5) == [2.0, None, None]
    assert validity.weighted_sum(values, {"a": 1.0, "b": 0.0}) == [1.0, 2.0, None]  # 0: unread
