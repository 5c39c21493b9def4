"""The refineaf_superni YAMLs are exactly what the generator writes, for all 119 tasks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

from refine_af.evaluation.superni_tasks import TEST_TASKS
from refine_af.evaluation.tasks import tasks_dir

FOLDER = tasks_dir() / "refineaf_superni"


def _generator():
    spec = importlib.util.spec_from_file_location("gen", FOLDER / "_generate_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    gen = _generator()
    assert gen.main(["--check"]) == 0
    assert gen.main(["--out", str(tmp_path)]) == 0
    written = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    on_disk = {p.name: p.read_text() for p in FOLDER.glob("*.yaml")}
    assert written == on_disk


def test_check_reports_a_stale_file(tmp_path: Path, capsys) -> None:
    gen = _generator()
    gen.main(["--out", str(tmp_path)])
    (tmp_path / "refineaf_superni_task1356_xlsum_title_generation.yaml").write_text("task: x\n")
    (tmp_path / "stray.yaml").write_text("task: y\n")
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "task1356_xlsum_title_generation" in out and "stray.yaml" in out


def test_one_task_per_test_task_and_variant() -> None:
    for group in ("refineaf_superni", "refineaf_superni_pos2"):
        names = set()
        for name, _, _ in TEST_TASKS:
            cfg = yaml.safe_load((FOLDER / f"{group}_{name}.yaml").read_text())
            assert cfg["task"] == f"{group}_{name}"
            assert cfg["dataset_kwargs"] == {"superni_task": name}
            names.add(cfg["task"])
        assert len(names) == 119
        top = yaml.safe_load((FOLDER / f"_{group}.yaml").read_text())
        members = [
            t
            for sub in top["task"]
            for t in yaml.safe_load((FOLDER / f"_{sub}.yaml").read_text())["task"]
        ]
        assert sorted(members) == sorted(names)
        assert {m["metric"] for m in top["aggregate_metric_list"]} == {"rougeL", "exact_match"}
        assert all(m["weight_by_size"] for m in top["aggregate_metric_list"])


def test_task_table_matches_the_shared_files(shared_data: Path) -> None:
    lines = (shared_data / "superni_test_tasks.txt").read_text().splitlines()
    names = [line.strip() for line in lines if line.strip()]
    assert [t for t, _, _ in TEST_TASKS] == names
    counts: dict[str, int] = {}
    categories: dict[str, str] = {}
    for line in (shared_data / "superni_test_references.jsonl").open():
        row = json.loads(line)
        counts[row["task_id"]] = counts.get(row["task_id"], 0) + 1
        categories[row["task_id"]] = row["task_category"]
    assert {t: (c, n) for t, c, n in TEST_TASKS} == {t: (categories[t], counts[t]) for t in names}


def test_lm_eval_indexes_all_tasks_and_groups() -> None:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    names = set(manager.all_tasks)
    for group in ("refineaf_superni", "refineaf_superni_pos2"):
        assert group in names
        assert sum(1 for n in names if n.startswith(group + "_task")) == 119
