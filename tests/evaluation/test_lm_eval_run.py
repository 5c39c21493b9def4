"""Real (tiny) lm-eval runs: group aggregates fill in, and refineaf-hf equals lm-eval's hf.

A known lm-eval pitfall is a group whose score stays silently empty (a metric or filter name
that does not match its children); here the groups' ROUGE-L must be a number equal to the mean
over all instances.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

import refine_af.evaluation.lm  # noqa: F401 - registers refineaf-hf
from refine_af.evaluation.tasks import tasks_dir

TASKS = [
    "refineaf_superni_task1345_glue_qqp_question_paraprashing",
    "refineaf_superni_task1152_bard_analogical_reasoning_causation",
]


def _evaluate(model_dir: Path, shared: Path, tasks: list[str], include: list[str], **kw):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    manager = TaskManager(
        include_path=[str(tasks_dir()), *include],
        include_defaults=False,
        metadata={"superni_data": str(shared / "superni_test.jsonl.gz")},
    )
    return simple_evaluate(
        model=kw.pop("model", "refineaf-hf"),
        model_args={"pretrained": str(model_dir), "device": "cpu", "dtype": "float32"},
        tasks=tasks,
        limit=2,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=0,
        gen_kwargs={"max_gen_toks": 24},
        **kw,
    )


@pytest.fixture(scope="module")
def nested_group(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-level group over real tasks, written with the generator's aggregate block."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gen", tasks_dir() / "refineaf_superni" / "_generate_configs.py"
    )
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    folder = tmp_path_factory.mktemp("groups")
    (folder / "_inner.yaml").write_text(
        f"group: test_inner\ntask:\n  - {TASKS[0]}\n  - {TASKS[1]}\n" + gen.AGGREGATE
    )
    (folder / "_outer.yaml").write_text(
        "group: test_outer\ntask:\n  - test_inner\n"
        "  - refineaf_superni_task670_ambigqa_question_generation\n" + gen.AGGREGATE
    )
    return folder


def _instance_mean(result: dict, metric: str = "rougeL") -> float:
    values = [s[metric] for samples in result["samples"].values() for s in samples]
    return sum(values) / len(values)


def test_group_scores_fill_in(tiny_model: Path, shared_data: Path, nested_group: Path) -> None:
    result = _evaluate(tiny_model, shared_data, ["test_outer"], [str(nested_group)])
    assert len(result["samples"]) == 3
    for group in ("test_outer", "test_inner"):
        for metric in ("rougeL", "exact_match"):
            value = result["results"][group][f"{metric},none"]
            assert isinstance(value, float) and not math.isnan(value)
    assert result["results"]["test_outer"]["rougeL,none"] == pytest.approx(_instance_mean(result))


def test_real_category_group_fills_in(tiny_model: Path, shared_data: Path) -> None:
    # Word Analogy: all 8 of its test tasks are in the offline data.
    group = "refineaf_superni_word_analogy"
    result = _evaluate(tiny_model, shared_data, [group], [])
    assert len(result["samples"]) == 8
    value = result["results"][group]["rougeL,none"]
    assert isinstance(value, float) and value == pytest.approx(_instance_mean(result))


def test_group_with_missing_data_fails_loudly(tiny_model: Path, shared_data: Path) -> None:
    from refine_af.errors import UserError

    # Keyword Tagging has 5 test tasks, 3 of them in the offline data.
    with pytest.raises(UserError, match=r"has no task task\d+_\w+ \(it has 30 of the 119"):
        _evaluate(tiny_model, shared_data, ["refineaf_superni_keyword_tagging"], [])


def test_refineaf_hf_matches_hf(tiny_model: Path, shared_data: Path) -> None:
    fast = _evaluate(tiny_model, shared_data, TASKS, [], batch_size=64)
    plain = _evaluate(tiny_model, shared_data, TASKS, [], model="hf", batch_size=2)
    for task in TASKS:
        a = [s["filtered_resps"][0] for s in fast["samples"][task]]
        b = [s["filtered_resps"][0] for s in plain["samples"][task]]
        assert a == b
        assert fast["results"][task]["rougeL,none"] == plain["results"][task]["rougeL,none"]
