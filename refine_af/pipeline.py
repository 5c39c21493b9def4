"""``refineaf train``: stage 1 → 2 → 3 in one run directory, skipping what is already done.

Order: instructions (stage 1) → RL (stage 2, REFINE-AF only) → for each variant, instances then
LoRA fine-tuning (stage 3). Both variants read the same instruction pool, so the REFINE-AF and
the Self-Instruct baseline adapters differ only by the model that wrote their instances.

Each step has a fingerprint of its settings and of its inputs' content (the instruction file,
the RL adapter, the instance file); a step whose fingerprint matches a finished run is skipped,
one whose inputs or settings changed is re-run (its stale outputs set aside), and an interrupted
one resumes from its batch log or checkpoints. The run ends with ``data_card.md`` and
``data_card.json``: counts kept/dropped per filter per stage, reward statistics, seeds,
versions and time per stage.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refine_af.config import ConfigError, fingerprint, help_field
from refine_af.run_dir import RunDirectory, package_versions, write_json_atomic

VARIANTS = ("refine_af", "baseline")


@dataclass
class PipelineConfig:
    """What ``refineaf train`` runs."""

    variants: list[str] = help_field(  # noqa: RUF009 - help_field is field()
        ["refine_af", "baseline"],
        "Adapters to train: 'refine_af' (instances from the RL adapter) and/or 'baseline' "
        "(Self-Instruct: instances from the untuned model). --baseline means ['baseline'].",
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


def _log(message: str) -> None:
    print(f"[refineaf train] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# Steps.


def _instructions(config: Any, run_dir: RunDirectory) -> dict[str, Any]:
    from refine_af.stages import instructions

    key = fingerprint(
        instructions.generation_fingerprint(config),
        config.generate_instructions.num_instructions,
    )
    if run_dir.is_done(instructions.STAGE, key):
        _log("stage 1 (instructions): unchanged, skipped")
        return {"skipped": True}
    _log("stage 1 (instructions): running")
    # restart=True: settings changed, so the old pool is set aside rather than refused.
    return instructions.run(config, run_dir, restart=True)


def _rl(config: Any, run_dir: RunDirectory) -> dict[str, Any]:
    from refine_af.stages import rl

    digest = rl.file_digest(run_dir.path / rl.INSTRUCTIONS_FILE)
    resume_key = rl.checkpoint_key(config, digest)
    key = fingerprint(resume_key, config.rl.num_steps)
    folder = run_dir.path / rl.STAGE
    if run_dir.is_done(rl.STAGE, key) and (folder / "adapter" / "adapter_config.json").is_file():
        _log("stage 2 (RL): unchanged, skipped")
        return {"skipped": True}
    key_file = folder / "checkpoint_key"
    if key_file.is_file() and key_file.read_text().strip() != resume_key:
        # Checkpoints of other instructions or settings can't be resumed: set them aside.
        aside = folder.with_name(f"{folder.name}.replaced-{key_file.read_text().strip()}")
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        _log(f"stage 2 (RL): inputs changed, old run moved to {aside.name}")
    _log("stage 2 (RL): running")
    return rl.run(config, run_dir, resume=True)


def _instances(config: Any, run_dir: RunDirectory, variant: str) -> dict[str, Any]:
    from refine_af.stages import instances

    key = instances.stage_fingerprint(config, run_dir, variant)
    if run_dir.is_done(instances.stage_name(variant), key):
        _log(f"stage 3 (instances, {variant}): unchanged, skipped")
        return {"skipped": True}
    _log(f"stage 3 (instances, {variant}): running")
    return instances.run(config, run_dir, variant, restart=True)


def _sft(config: Any, run_dir: RunDirectory, variant: str) -> dict[str, Any]:
    from refine_af.stages import sft

    key = sft.stage_fingerprint(config, run_dir, variant)
    adapter = run_dir.path / sft.STAGE_DIR / variant / "adapter"
    merged_missing = config.sft.merge and not (adapter.parent / "merged").is_dir()
    if run_dir.is_done(sft.stage_name(variant), key) and adapter.is_dir() and not merged_missing:
        _log(f"stage 3 (fine-tuning, {variant}): unchanged, skipped")
        return {"skipped": True}
    _log(f"stage 3 (fine-tuning, {variant}): running")
    return sft.run(config, run_dir, variant)


def run(config: Any, run_dir: RunDirectory, variants: list[str] | None = None) -> dict[str, Any]:
    """Run every stage that is not already done; write the data card; return where things are."""
    chosen = list(variants or config.pipeline.variants)
    started = time.time()
    steps: dict[str, Any] = {"instructions": _instructions(config, run_dir)}
    if "refine_af" in chosen:
        steps["rl"] = _rl(config, run_dir)
    for variant in chosen:
        steps[f"instances:{variant}"] = _instances(config, run_dir, variant)
        steps[f"sft:{variant}"] = _sft(config, run_dir, variant)
    card = write_data_card(config, run_dir, chosen)
    adapters = {v: str(run_dir.path / "sft" / v / "adapter") for v in chosen}
    result = {
        "adapters": adapters,
        "data_card": str(run_dir.path / "data_card.md"),
        "skipped": [name for name, step in steps.items() if step.get("skipped")],
        "seconds": round(time.time() - started, 1),
        "card": card,
    }
    return result


# ---------------------------------------------------------------------------------------------
# The data card.


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def reward_statistics(metrics_path: Path) -> dict[str, Any] | None:
    """Per logged reward column of ``RUN/rl/metrics.jsonl``: first, last, mean, min, max."""
    if not metrics_path.is_file():
        return None
    rows = []
    for line in metrics_path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
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
    for key in ("candidates", "kept"):
        if key in summary:
            lines.append(f"| {key} | {summary[key]} |")
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
                f"{summary['unparsed_completions']} of {summary['completions']}.",
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
    (run_dir.path / "data_card.md").write_text(render_card(card))
    return card
