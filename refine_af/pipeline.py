"""``refineaf train``: stage 1 → 2 → 3 in one run directory, skipping what is already done.

Order: instructions (stage 1) → RL (stage 2, REFINE-AF only) → for each variant, instances then
LoRA fine-tuning (stage 3). Both variants read the same instruction pool, so the REFINE-AF and
the Self-Instruct baseline adapters differ only by the model that wrote their instances.

The pipeline knows nothing of a stage's internals: it calls the protocol of
:mod:`refine_af.stages` only. First every planned stage's ``check``, so a bad input (a typo in
the fine-tuning settings, SuperNI data without the test tasks) stops the run with one line
before stage 1 starts, not after an hour of RL. Then, stage by stage, ``is_done`` and otherwise
``run``, which follows the one resume rule: a stage whose inputs or settings changed sets its
stale outputs aside (never deletes them) and starts afresh, and an interrupted one continues
from its last batch or checkpoint (fine-tuning and RL included). ``--restart`` sets every stage's
outputs aside and starts again. The run ends with ``data_card.md`` and ``data_card.json``:
counts kept/dropped per filter per stage, reward statistics, seeds, versions and time per stage.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_af import stages
from refine_af.config import ConfigError, help_field
from refine_af.run_dir import RunDirectory, package_versions
from refine_af.stages import VARIANTS, Stage, Step
from refine_af.storage import read_json, read_log, write_json_atomic, write_text_atomic


@dataclass
class PipelineConfig:
    """What ``refineaf train`` runs."""

    variants: list[str] = help_field(  # noqa: RUF009 - help_field is field()
        ["refine_af", "baseline"],
        "Adapters to train: 'refine_af' (instances from the RL adapter), 'baseline' "
        "(Self-Instruct: instances from the untuned model), 'seeds_only' (the control: "
        "the 175 seed tasks' own instances) and/or 'seeds_matched' (as many of those as the "
        "REFINE-AF set kept; listed after refine_af). --baseline means ['baseline'].",
    )

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ConfigError(
                f"pipeline.variants must be a non-empty list of {', '.join(VARIANTS)}; "
                f"got {self.variants}"
            )
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"pipeline.variants lists a variant twice: {self.variants}")
        if "seeds_matched" in self.variants and (
            "refine_af" not in self.variants
            or self.variants.index("refine_af") > self.variants.index("seeds_matched")
        ):
            raise ConfigError(
                "pipeline.variants: seeds_matched is sized to the REFINE-AF set; list refine_af "
                "before it, e.g. [refine_af, baseline, seeds_only, seeds_matched]; got "
                f"{self.variants}"
            )


def _log(message: str) -> None:
    print(f"[refineaf train] {message}", flush=True)


def plan(config: Any) -> list[Step]:
    """The steps of ``refineaf train`` for the configured variants, in order."""
    return stages.plan(list(config.pipeline.variants))


def check_inputs(config: Any) -> None:
    """Every planned stage's ``check``: each input a stage will read, by path and content."""
    checked: list[Stage] = []
    for step in plan(config):
        if not any(step.stage is stage for stage in checked):
            step.stage.check(config)
            checked.append(step.stage)


def run(config: Any, run_dir: RunDirectory, restart: bool = False) -> dict[str, Any]:
    """Run every stage that is not already done; write the data card; return where things are.

    ``restart`` (``refineaf train --restart``) sets every planned stage's outputs aside and runs
    it again; otherwise a stage continues what its last attempt left (see refine_af.stages).
    """
    from refine_af.models import release_memory

    started = time.time()
    check_inputs(config)
    skipped = []
    for step in plan(config):
        if not restart and step.stage.is_done(config, run_dir, step.variant):
            _log(f"{step.label}: unchanged, skipped")
            skipped.append(step.label)
            continue
        _log(f"{step.label}: running")
        step.stage.run(config, run_dir, step.variant, restart=restart)
        release_memory()  # the stage's models go before the next stage loads its own
    variants = list(config.pipeline.variants)
    card = write_data_card(config, run_dir, variants)
    return {
        "adapters": {v: str(run_dir.path / "sft" / v / "adapter") for v in variants},
        "data_card": str(run_dir.path / "data_card.md"),
        "skipped": skipped,
        "seconds": round(time.time() - started, 1),
        "card": card,
    }


# ---------------------------------------------------------------------------------------------
# The data card.


def _read_json(path: Path) -> dict[str, Any] | None:
    return read_json(path, "the data card needs it: re-run the stage that writes it")


def reward_statistics(metrics_path: Path) -> dict[str, Any] | None:
    """Per logged reward column of ``RUN/rl/metrics.jsonl``: first, last, mean, min, max."""
    if not metrics_path.is_file():
        return None
    rows = read_log(metrics_path)
    columns = sorted(
        {k for row in rows for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
    )
    stats: dict[str, Any] = {"logged_steps": len(rows)}
    for column in columns:
        values = [float(r[column]) for r in rows if isinstance(r.get(column), (int, float))]
        if not values:
            continue
        stats[column] = {
            "first": round(values[0], 4),
            "last": round(values[-1], 4),
            "mean": round(statistics.fmean(values), 4),
            "min": round(min(values), 4),
            "max": round(max(values), 4),
        }
    return stats


def collect_card(config: Any, run_dir: RunDirectory, variants: list[str]) -> dict[str, Any]:
    """Everything the data card shows, as plain data."""
    status = run_dir.read_status()
    stages = {
        name: {
            "state": entry.get("state"),
            "seconds": entry.get("seconds"),
            "finished_at": entry.get("finished_at"),
        }
        for name, entry in status.items()
    }
    root = run_dir.path
    card: dict[str, Any] = {
        "run_dir": str(root),
        "seed": config.run.seed,
        "model": config.run.model,
        "variants": variants,
        "stages": stages,
        "instructions": _read_json(root / "instructions" / "summary.json"),
        "rl": {
            "summary": _read_json(root / "rl" / "summary.json"),
            "rewards": reward_statistics(root / "rl" / "metrics.jsonl"),
        }
        if "refine_af" in variants
        else None,
        "instances": {v: _read_json(root / "instances" / v / "summary.json") for v in variants},
        "sft": {v: _read_json(root / "sft" / v / "summary.json") for v in variants},
        "adapters": {v: str(root / "sft" / v / "adapter") for v in variants},
        "versions": _read_json(root / "versions.json") or package_versions(),
    }
    return card


def _counts_table(title: str, summary: dict[str, Any] | None) -> list[str]:
    if not summary:
        return [f"*{title}: not run.*", ""]
    lines = [f"| {title} | count |", "|---|---:|"]
    for key in ("candidates", "kept", "kept_without_input"):
        if key in summary:
            lines.append(f"| {key.replace('_', ' ')} | {summary[key]} |")
    for reason, count in (summary.get("dropped") or {}).items():
        lines.append(f"| dropped: {reason} | {count} |")
    return [*lines, ""]


def render_card(card: dict[str, Any]) -> str:
    """The data card as Markdown."""
    out = [
        "# Data card",
        "",
        f"Run directory `{card['run_dir']}`; base model `{card['model']}`; seed {card['seed']}; "
        f"variants: {', '.join(card['variants'])}.",
        "",
        "## Time per stage",
        "",
        "| stage | state | seconds |",
        "|---|---|---:|",
    ]
    for name, entry in card["stages"].items():
        out.append(f"| {name} | {entry['state']} | {entry['seconds']} |")
    out += ["", "## Stage 1: instructions", ""]
    instructions = card["instructions"] or {}
    out += _counts_table("instructions", instructions)
    if instructions:
        out += [f"Classification tasks among the kept: {instructions.get('classification')}.", ""]
    if card["rl"] is not None:
        out += ["## Stage 2: RL from automated feedback", ""]
        rewards = card["rl"]["rewards"]
        if rewards:
            out += [
                f"{rewards['logged_steps']} logged steps (from `rl/metrics.jsonl`).",
                "",
                "| metric | first | last | mean | min | max |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for name, s in rewards.items():
                if isinstance(s, dict):
                    out.append(
                        f"| {name} | {s['first']} | {s['last']} | {s['mean']} | {s['min']} | "
                        f"{s['max']} |"
                    )
            out.append("")
        else:
            out += ["*No reward metrics found (rl/metrics.jsonl).*", ""]
    for variant, summary in card["instances"].items():
        out += [f"## Stage 3: instances ({variant})", ""]
        out += _counts_table("instances", summary)
        if summary:
            tasks = summary["instructions"]
            decontamination = summary["decontamination"]
            out += [
                f"Instructions: {tasks['available']} available, "
                f"{tasks['dropped_contaminated']} dropped as overlapping SuperNI test tasks, "
                f"{tasks['processed']} used, {tasks['with_instances']} with at least one kept "
                f"instance. Completions that yielded no instance: "
                f"{summary['unparsed_completions']} of {summary['completions']}"
                + (
                    f"; that ran on after their output: {summary['completions_running_on']}."
                    if summary.get("completions_running_on") is not None
                    else "."
                ),
                "",
                f"Decontamination: {decontamination['note']}"
                + (
                    f" (source `{decontamination['source']}`)." if decontamination["source"] else ""
                ),
                "",
            ]
    for variant, summary in card["sft"].items():
        out += [f"## Stage 3: LoRA fine-tuning ({variant})", ""]
        if summary:
            out += [
                f"{summary['examples']} examples, {summary['steps']} steps "
                f"({summary['epochs']} epochs), mean training loss {summary['train_loss']} "
                f"(first logged {summary['first_logged_loss']}, last "
                f"{summary['last_logged_loss']}). Adapter: `{summary['adapter']}`.",
                "",
            ]
        else:
            out += ["*Not run.*", ""]
    out += ["## Versions", ""]
    out += [f"- {name}: {version}" for name, version in card["versions"].items()]
    return "\n".join(out) + "\n"


def write_data_card(config: Any, run_dir: RunDirectory, variants: list[str]) -> dict[str, Any]:
    card = collect_card(config, run_dir, variants)
    write_json_atomic(run_dir.path / "data_card.json", card)
    write_text_atomic(run_dir.path / "data_card.md", render_card(card))
    return card
