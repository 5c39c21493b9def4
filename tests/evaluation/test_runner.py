"""`refineaf eval` end to end on a tiny model with an adapter row; configs; regression logic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refine_af.config import ConfigError
from refine_af.errors import UserError
from refine_af.evaluation.regression import compare, load_regression_config, task_summary
from refine_af.evaluation.runner import EvalConfig, RowConfig, load_eval_config, run_eval

REPO = Path(__file__).resolve().parents[2]
TASKS = ["task1345_glue_qqp_question_paraprashing", "task1152_bard_analogical_reasoning_causation"]


@pytest.mark.parametrize("path", sorted((REPO / "eval_configs").glob("*.yaml")), ids=str)
def test_shipped_configs_load(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# refineaf eval") and str(path.relative_to(REPO)) in first
    if path.name == "regression.yaml":
        assert load_regression_config(str(path)).eval.limit
    else:
        assert load_eval_config(str(path)).rows


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'limt'"):
        load_eval_config(str(REPO / "eval_configs/default.yaml"), ["limt=3"])
    with pytest.raises(ConfigError, match="unique"):
        EvalConfig(rows=[RowConfig("a"), RowConfig("a")])
    with pytest.raises(ConfigError, match="compare entry"):
        EvalConfig(rows=[RowConfig("a")], compare=[["a", "b"]])


def test_default_comparisons_pair_every_row_with_each_row_above_it() -> None:
    rows = [RowConfig("vanilla"), RowConfig("baseline"), RowConfig("refine_af")]
    assert EvalConfig(rows=rows).pairs() == [
        ("baseline", "vanilla"),
        ("refine_af", "vanilla"),
        ("refine_af", "baseline"),  # the paper's headline comparison
    ]
    assert EvalConfig(rows=rows, compare=[["refine_af", "baseline"]]).pairs() == [
        ("refine_af", "baseline")
    ]


def test_missing_adapter_is_one_clear_line(tmp_path: Path) -> None:
    config = EvalConfig(
        rows=[RowConfig("vanilla"), RowConfig("refine_af", str(tmp_path / "nope"))],
        tasks=TASKS,
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(UserError, match=r"row 'refine_af': adapter .*nope does not exist"):
        run_eval(config)


def test_eval_with_adapter_row_writes_report(
    tiny_model: Path, tiny_adapter: Path, shared_data: Path, tmp_path: Path
) -> None:
    config = EvalConfig(
        model=str(tiny_model),
        rows=[RowConfig("vanilla"), RowConfig("tuned", str(tiny_adapter))],
        tasks=TASKS,
        limit=2,
        max_gen_toks=16,
        data=str(shared_data / "superni_test.jsonl.gz"),
        device="cpu",
        output_dir=str(tmp_path / "out"),
        bootstrap_samples=50,
    )
    report = run_eval(config)
    text = report.read_text()
    assert "tuned beats vanilla on" in text and "| vanilla |" in text
    samples = {
        row: [json.loads(x) for x in (tmp_path / "out" / row / "samples.jsonl").open()]
        for row in ("vanilla", "tuned")
    }
    assert [len(v) for v in samples.values()] == [4, 4]
    assert samples["vanilla"][0]["prompt"].endswith("\nOutput:")
    # The adapter is really applied: its outputs differ from the base model's.
    assert [s["prediction"] for s in samples["vanilla"]] != [
        s["prediction"] for s in samples["tuned"]
    ]
    # Re-running reuses finished rows (same settings).
    before = (tmp_path / "out" / "tuned" / "row.json").stat().st_mtime_ns
    run_eval(config)
    assert (tmp_path / "out" / "tuned" / "row.json").stat().st_mtime_ns == before


def test_regression_compare_names_moved_tasks() -> None:
    records = [
        {"task": "t1", "prompt": "p1", "rougeL": 50.0, "exact_match": 0.0},
        {"task": "t1", "prompt": "p2", "rougeL": 30.0, "exact_match": 0.0},
        {"task": "t2", "prompt": "q", "rougeL": 10.0, "exact_match": 100.0},
    ]
    reference = task_summary(records)
    assert compare(task_summary(records), reference, 1.0) == []
    moved = [dict(r) for r in records]
    moved[0]["rougeL"] = 54.0  # t1 mean +2
    moved[2]["prompt"] = "q changed"
    problems = compare(task_summary(moved), reference, 1.0)
    assert problems == ["t1: rougeL 40.00 -> 42.00 (+2.00)", "t2: prompts changed (1 -> 1)"]
    assert compare(task_summary(records[:2]), reference, 1.0) == [
        "t2: in the reference but not evaluated"
    ]
    assert compare(task_summary(moved), reference, 5.0) == ["t2: prompts changed (1 -> 1)"]
