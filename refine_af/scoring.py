"""``refineaf score``: the automated feedback of stage 2 on any JSONL of instances.

Users score existing data (Alpaca-style files: ``instruction``, ``input``, ``output``) with the
same scorers, rewards and weights as stage 2 (the ``rl`` section of a train config), to compare
datasets or see what the reward prefers. Scoring goes through
:meth:`refine_af.rewards.WeightedRewards.score_instances`, the code stage 2 uses, so the numbers
are the ones stage 2 logs for the same instances.

The output holds every input row with a ``rewards`` object added: each active reward's value and
``combined`` (the weighted sum, intercept included); a row with an empty output is not scored
(``rewards: null``). It is written as it goes, one batch at a time (refine_af.batches, the log
format of every stage); running the same command again continues after the last complete batch.
``OUTPUT.key`` records which input and settings the output belongs to: a changed command sets the
old output aside (``OUTPUT.replaced-<key>``, never deleted) instead of appending to it, and so
does ``--restart``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from refine_af.batches import Output, run_batches
from refine_af.config import fingerprint, to_dict
from refine_af.errors import UserError
from refine_af.instance_format import ParsedInstance
from refine_af.lock import hold
from refine_af.storage import file_digest, read_log, read_records

# The rl settings that decide the scores (not the batch size or the device).
SCORING_SETTINGS = (
    "reward_weights",
    "reward_intercept",
    "reward_model",
    "evaluator",
    "evaluator_kind",
    "scorer_dtype",
    "scorer_max_length",
    "use_chat_template",
)


@dataclass(frozen=True)
class Instance:
    """One input row: the row itself, and the instance to score (None: empty output)."""

    row: dict[str, Any]
    instruction: str
    instance: ParsedInstance | None


def read_instances(path: Path) -> list[Instance]:
    """Rows with ``instruction`` and ``output`` strings (``input`` optional); else one line."""
    rows = read_records(path, "each line must be a JSON object with instruction and output")
    if not rows:
        raise UserError(f"{path} holds no rows: give a JSONL with instruction, input, output")
    items = []
    for number, row in enumerate(rows, 1):
        for field in ("instruction", "output"):
            if not isinstance(row.get(field), str):
                raise UserError(f"{path} row {number} has no '{field}' string")
        if not isinstance(row.get("input", ""), str):
            raise UserError(f"{path} row {number}: 'input' must be a string")
        output = row["output"].strip()
        instance = ParsedInstance(row.get("input", "").strip(), output) if output else None
        items.append(Instance(row, " ".join(row["instruction"].split()), instance))
    return items


def output_key(config: Any, input_path: Path) -> str:
    settings = to_dict(config.rl)
    return fingerprint(
        {name: settings[name] for name in SCORING_SETTINGS},
        config.run.seed,
        file_digest(input_path),
    )


def scored_rows(output: Path, items: list[Instance]) -> list[dict[str, Any]]:
    """The rows a kept output already holds (a torn last row is cut off by the log reader)."""
    done = read_log(output)
    if len(done) > len(items) or any(
        record.get("instruction") != item.row.get("instruction")
        for record, item in zip(done, items, strict=False)
    ):
        raise UserError(
            f"{output} does not match the rows of the input: run again with --restart to set it "
            "aside and start again"
        )
    return done


def run(
    config: Any,
    input_path: Path,
    output_path: Path,
    batch_rows: int = 64,
    restart: bool = False,
) -> dict[str, Any]:
    """Score every row of ``input_path`` into ``output_path``, after the one resume rule: an
    output of the same input and settings is continued after its last complete batch, one of
    others (or any with ``restart``) is set aside with its key file, never deleted."""
    if batch_rows < 1:
        raise UserError(f"--batch-rows must be >= 1, got {batch_rows}")
    if input_path.resolve() == output_path.resolve():
        raise UserError("--output must differ from --input: the input is read, never rewritten")
    items = read_instances(input_path)
    # One writer per output folder (refine_af.lock), taken before the scorers load.
    with hold(output_path.parent, "output folder"):
        return _score(config, items, input_path, output_path, batch_rows, restart)


def _score(
    config: Any,
    items: list[Instance],
    input_path: Path,
    output_path: Path,
    batch_rows: int,
    restart: bool,
) -> dict[str, Any]:
    from refine_af.models import choose_placement
    from refine_af.stages.rl import load_scorers, weighted_rewards

    Output(output_path, is_folder=False).claim(output_key(config, input_path), restart, "scores")
    records = scored_rows(output_path, items)
    if len(records) < len(items):
        device = config.rl.scorer_device
        if device == "auto":
            device = choose_placement(config.run.device, config.run.dtype).device
        rewards = weighted_rewards(config, load_scorers(config, device))
        progress = tqdm(total=len(items), initial=len(records), unit="row", desc="scoring")

        def next_batch(done: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            if len(done) >= len(items):
                return None
            return score_batch(rewards, items[len(done) : len(done) + batch_rows])

        run_batches(output_path, next_batch, lambda batch: progress.update(len(batch)), records)
        progress.close()
    scored = [r["rewards"] for r in records if r.get("rewards")]
    combined = [s["combined"] for s in scored]
    return {
        "rows": len(items),
        "scored": len(scored),
        "skipped_empty_output": len(items) - len(scored),
        "mean_combined": round(sum(combined) / len(combined), 4) if combined else None,
        "output": str(output_path),
    }


def score_batch(rewards: Any, batch: list[Instance]) -> list[dict[str, Any]]:
    """The output rows of one batch: every input row with its ``rewards`` (None: empty output)."""
    scorable = [item for item in batch if item.instance is not None]
    samples = rewards.score_instances(
        [item.instruction for item in scorable],
        [item.instance for item in scorable if item.instance is not None],
    )
    by_item = dict(zip((id(item) for item in scorable), samples, strict=True))
    rows = []
    for item in batch:
        sample = by_item.get(id(item))
        scores = None if sample is None else {**sample.values, "combined": sample.combined}
        rows.append({**item.row, "rewards": scores})
    return rows
