"""CI regression check: a small deterministic SuperNI evaluation compared with a stored reference.

``refineaf eval-regression -c eval_configs/regression.yaml`` evaluates the embedded default
model (greedy, CPU float32, fixed thread count) on a fixed subset of the offline tasks, a few
instances each, and compares every task with the reference JSON:

* the **prompts** (SHA-256 of every prompt of the task) must be identical -- a changed template,
  loader or truncation shows up here even when the scores happen not to move;
* the **ROUGE-L and exact match** must agree within ``tolerance`` points (x100 scale). Decoding
  is deterministic on one machine; the tolerance absorbs last-bit float differences between
  CPUs that could flip a near-tie token.

On failure it prints which tasks moved and exits non-zero. To accept a change on purpose, run
``refineaf eval-regression -c eval_configs/regression.yaml --update`` and commit the new
reference file together with the change that explains it.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refine_af.config import (
    ConfigError,
    apply_overrides,
    build_dataclass,
    help_field,
    read_config_file,
)
from refine_af.errors import UserError
from refine_af.evaluation.config import EvalConfig, find_eval_config
from refine_af.evaluation.report import grouped_scores
from refine_af.storage import read_json, write_json_atomic


class RegressionFailure(UserError):
    """Scores or prompts moved away from the stored reference."""


@dataclass
class RegressionConfig:
    """The regression check: an eval plus where its reference lives and how close it must be."""

    reference: str = help_field(
        "tests/evaluation/regression_reference.json", "Stored per-task reference scores."
    )
    tolerance: float = help_field(1.0, "Allowed |delta| per task and metric, in points (x100).")
    eval: EvalConfig = field(
        default_factory=EvalConfig, metadata={"help": "The evaluation to run (one row)."}
    )

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ConfigError(f"tolerance must be >= 0, got {self.tolerance}")
        if len(self.eval.rows) != 1 or len(self.eval.rows[0].adapters()) != 1:
            raise ConfigError("the regression eval runs exactly one row with at most one adapter")


def load_regression_config(path: str, overrides: list[str] | None = None) -> RegressionConfig:
    """A regression YAML by path or packaged name (``regression``)."""
    raw = apply_overrides(read_config_file(str(find_eval_config(path))), list(overrides or []))
    return build_dataclass(RegressionConfig, raw)


def task_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: scores, instance count and a hash of its prompts."""
    rouge = grouped_scores(records, "task", "rougeL")
    em = grouped_scores(records, "task", "exact_match")
    summary: dict[str, dict[str, Any]] = {}
    for task in rouge:
        prompts = [r["prompt"] for r in records if r["task"] == task]
        digest = hashlib.sha256("\x00".join(prompts).encode()).hexdigest()
        summary[task] = {
            "rougeL": round(rouge[task], 4),
            "exact_match": round(em[task], 4),
            "instances": len(prompts),
            "prompts_sha256": digest,
        }
    return summary


def compare(
    current: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]], tolerance: float
) -> list[str]:
    """One line per task that moved (empty: all within tolerance)."""
    problems = []
    for task in sorted(set(reference) | set(current)):
        if task not in current:
            problems.append(f"{task}: in the reference but not evaluated")
            continue
        if task not in reference:
            problems.append(f"{task}: evaluated but not in the reference")
            continue
        now, ref = current[task], reference[task]
        if now["prompts_sha256"] != ref["prompts_sha256"] or now["instances"] != ref["instances"]:
            problems.append(f"{task}: prompts changed ({ref['instances']} -> {now['instances']})")
        for metric in ("rougeL", "exact_match"):
            delta = now[metric] - ref[metric]
            if abs(delta) > tolerance:
                problems.append(
                    f"{task}: {metric} {ref[metric]:.2f} -> {now[metric]:.2f} ({delta:+.2f})"
                )
    return problems


def run_regression(config: RegressionConfig, update: bool = False) -> str:
    """Run the check; return a one-paragraph summary, raise RegressionFailure when it fails."""
    from refine_af.evaluation.runner import check_inputs, evaluate_run

    eval_config = config.eval
    model_path = check_inputs(eval_config)
    row = eval_config.rows[0]
    folder = Path(eval_config.output_dir).expanduser() / row.name
    # Scratch output: a regression check always evaluates the code as it is now, so the last
    # check's folder is replaced rather than resumed or set aside.
    shutil.rmtree(folder, ignore_errors=True)
    records = evaluate_run(eval_config, row.adapters()[0], model_path, folder, label=row.name)
    if records is None:
        return ""  # another process of accelerate launch
    current = task_summary(records)
    reference_path = Path(config.reference)
    if update:
        reference_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            reference_path,
            {
                "about": "refineaf eval-regression reference; refresh with --update on purpose",
                "tolerance": config.tolerance,
                "tasks": current,
            },
        )
        return f"wrote {reference_path} ({len(current)} tasks)"
    if not reference_path.is_file():
        raise UserError(
            f"no regression reference at {reference_path}: create it with "
            "'refineaf eval-regression -c eval_configs/regression.yaml --update'"
        )
    reference = read_json(reference_path, "refresh it with --update")["tasks"]
    problems = compare(current, reference, config.tolerance)
    if problems:
        raise RegressionFailure(
            f"SuperNI regression: {len(problems)} change(s) beyond tolerance "
            f"{config.tolerance}: " + "; ".join(problems) + ". If intended, refresh with "
            "'refineaf eval-regression -c eval_configs/regression.yaml --update'"
        )
    instances = sum(v["instances"] for v in current.values())
    return (
        f"SuperNI regression OK: {len(current)} tasks, {instances} instances, all within "
        f"{config.tolerance} points of {reference_path} and with unchanged prompts"
    )
