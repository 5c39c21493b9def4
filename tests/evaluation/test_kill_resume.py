"""SIGKILL at random moments during `refineaf eval`, resume, byte-identical outputs (slow)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TASKS = [
    "task1393_superglue_copa_text_completion",
    "task1152_bard_analogical_reasoning_causation",
    "task1345_glue_qqp_question_paraprashing",
    "task957_e2e_nlg_text_generation_generate",
]


def _kill_test_module():
    spec = importlib.util.spec_from_file_location(
        "eval_kill_test", REPO / "benchmarks" / "eval_kill_test.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_killed_eval_resumes_to_identical_bytes(
    tiny_model: Path, tiny_adapter: Path, shared_data: Path, tmp_path: Path
) -> None:
    second = tmp_path / "adapter2"
    second.mkdir()
    for path in tiny_adapter.iterdir():
        (second / path.name).write_bytes(path.read_bytes())
    config = {
        "model": str(tiny_model),
        "rows": [
            {"name": "vanilla"},
            {"name": "tuned", "adapter": [str(tiny_adapter), str(second)]},
        ],
        "tasks": TASKS,
        "limit": 2,
        "max_gen_toks": 16,
        "data": str(shared_data / "superni_test.jsonl.gz"),
        "device": "cpu",
        "bootstrap_samples": 50,
    }
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFINEAF_SUPERNI")}
    report = _kill_test_module().kill_test(config, work, kills=5, seed=3, env=env)
    print("\n".join(report.lines()))
    assert report.ok, report.lines()
    assert len(report.compared) == 5  # 3 runs' samples, report.md, report.json
    assert any(not kill["finished"] for kill in report.kills)
