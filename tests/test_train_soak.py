"""A short ``refineaf train`` with every stage and variant, SIGKILLed at 10 random moments (slow).

benchmarks/train_kill_soak.py at the sizes of tests/test_train_resume.py: the moments are drawn
with a seed across start-up and every stage (not only after checkpoints), the run is resumed
after each kill, and the result is compared with an uninterrupted run's: instructions and
instances byte for byte, adapters within that test's tolerance, and status.json accounting for
every kill. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _soak_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "train_kill_soak", REPO / "benchmarks" / "train_kill_soak.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_survives_ten_random_kills(
    tmp_path: Path, tiny_model_dir: Path, seed_tasks_file: Path
) -> None:
    soak = _soak_module()
    initial = tmp_path / "instructions.jsonl"
    initial.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in soak.INSTRUCTIONS))
    overrides = soak.tiny_overrides(tiny_model_dir, seed_tasks_file, initial)
    report = soak.soak(tmp_path, overrides, kills=10, seed=0, patch=soak.TINY_PATCH)
    print("\n".join(report.lines()))
    assert report.ok, report.lines()
    assert report.landed == 10, report.lines()
    assert len(report.compared) == 13  # 8 data files and 5 adapters, as the script lists them
    # The kills reached beyond the first stages.
    assert len({kill.stage for kill in report.kills if kill.stage}) >= 4, report.lines()
