"""Does the automated feedback mean anything? Each reward against labels read by people.

Before a GPU day is spent on RL from automated feedback, the feedback should rank instances the
way a careful reader would. This module scores a labelled file with the scorers and weights of a
train config's ``rl`` section (the code stage 2 and ``refineaf score`` use) and reports, per
registered reward and for the combined reward:

* **points** (rows with ``instruction``, ``input``, ``output`` and ``label``: good/bad, 1/0,
  true/false): the AUC of the reward against the labels, i.e. the chance that a random good
  instance scores above a random bad one (0.5: no signal; below 0.5: ranked backwards);
* **pairs** (RewardBench's rows ``prompt``, ``chosen``, ``rejected``): the share of pairs whose
  chosen answer scores above the rejected one (ties count half).

Each figure comes with a percentile bootstrap interval over the labelled items. ``refineaf score
--labels FILE`` prints the table; ``benchmarks/reward_validity.py`` runs it on the project's own
labelled set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refine_af.errors import UserError
from refine_af.instance_format import ParsedInstance
from refine_af.storage import read_records

COMBINED = "combined"
_GOOD = {"good", "1", "true", "yes", "correct"}
_BAD = {"bad", "0", "false", "no", "wrong", "junk"}


@dataclass(frozen=True)
class LabelledItem:
    """One labelled instance, or one preference pair (``rejected`` set)."""

    instruction: str
    input: str
    output: str  # the instance's output, or the chosen answer of a pair
    label: bool | None = None  # points only
    rejected: str | None = None  # pairs only


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _GOOD:
        return True
    if text in _BAD:
        return False
    raise UserError(f"{where}: label {value!r} is neither good (good/1/true) nor bad (bad/0/false)")


def read_labelled(path: Path) -> tuple[str, list[LabelledItem]]:
    """``("points", items)`` or ``("pairs", items)`` from a JSONL file; a bad row is one line."""
    layout = (
        "a JSONL of labelled instances (instruction, input, output, label) or of preference "
        "pairs (prompt, chosen, rejected)"
    )
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"label file {path} {what}: give {layout}")
    rows = read_records(
        path,
        f"each line must be one JSON object (a line cut short, a compressed or binary file is "
        f"not); fix it or copy the file again: {layout}",
    )
    if not rows:
        raise UserError(f"{path} holds no rows: give labelled instances or preference pairs")
    kinds = {"pairs" if "chosen" in row else "points" for row in rows}
    if len(kinds) > 1:
        raise UserError(
            f"{path} mixes labelled instances (label) and preference pairs (chosen/rejected): "
            "put each kind in its own file"
        )
    kind = kinds.pop()
    fields = ("prompt", "chosen", "rejected") if kind == "pairs" else ("instruction", "output")
    items = []
    for number, row in enumerate(rows, 1):
        where = f"{path} row {number}"
        for name in fields:
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise UserError(f"{where} has no '{name}' text")
        if kind == "pairs":
            items.append(
                LabelledItem(
                    " ".join(row["prompt"].split()),
                    "",
                    row["chosen"].strip(),
                    rejected=row["rejected"].strip(),
                )
            )
            continue
        if "label" not in row:
            raise UserError(f"{where} has no 'label' (good or bad)")
        input_text = row.get("input") or ""
        if not isinstance(input_text, str):
            raise UserError(f"{where}: 'input' must be a string")
        items.append(
            LabelledItem(
                " ".join(row["instruction"].split()),
                input_text.strip(),
                row["output"].strip(),
                _label(row["label"], where),
            )
        )
    if kind == "points" and len({item.label for item in items}) < 2:
        raise UserError(f"{path}: every row has the same label; an AUC needs good and bad rows")
    return kind, items


# ---------------------------------------------------------------------------------------------
# The statistics.


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a random good item > score of a random bad one), ties counting half."""
    values = np.asarray(scores, dtype=float)
    good = np.asarray(labels, dtype=bool)
    positives, negatives = int(good.sum()), int((~good).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("an AUC needs at least one good and one bad item")
    # Mann-Whitney U from average ranks (ties share their mean rank).
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = ranks[good].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs with chosen > rejected; a tie counts half."""
    a, b = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    return float(((a > b) + 0.5 * (a == b)).mean())


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float | None],
    size: int,
    samples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile interval of ``statistic(indices)`` over resamples of ``size`` items.

    A resample the statistic cannot use (it returns None, e.g. one class only) is drawn again
    up to a bound; None when too few resamples were usable.
    """
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(samples * 3):
        value = statistic(rng.integers(0, size, size))
        if value is not None:
            values.append(value)
            if len(values) == samples:
                break
    if len(values) < max(10, samples // 2):
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------
# Scoring the items with the config's feedback.


@dataclass
class ValidityRow:
    """One line of the table: a reward (or the combined one) against the labels."""

    name: str
    weight: float | None  # its weight in the config (None: the combined reward)
    value: float  # AUC (points) or pairwise accuracy (pairs)
    interval: tuple[float, float] | None
    scored: int  # items that had a value (an unparseable instance has none)


def component_values(
    config: Any, instructions: list[str], instances: list[ParsedInstance]
) -> dict[str, list[float | None]]:
    """Every registered reward's value per instance, and the combined reward of the config.

    All rewards are computed, weighted or not, so the table shows what an unweighted one would
    bring; the combined reward uses the config's weights and intercept (stage 2's formula).
    """
    from refine_af.models import choose_placement
    from refine_af.rewards import REWARDS, SIGNALS, AutomatedFeedback, WeightedRewards
    from refine_af.stages.rl import load_scorers

    settings = config.rl
    device = settings.scorer_device
    if device == "auto":
        device = choose_placement(config.run.device, config.run.dtype).device
    scorers = load_scorers(config, device, signals=set(SIGNALS))
    feedback = AutomatedFeedback(*scorers, SIGNALS).score(instructions, instances)
    blank: list[str | None] = [None] * len(instances)
    values: dict[str, list[float | None]] = {
        name: reward.function(blank, blank, feedback=feedback) for name, reward in REWARDS.items()
    }
    weighted = WeightedRewards(
        AutomatedFeedback(*scorers, set()), dict(settings.reward_weights), settings.reward_intercept
    )
    combined = weighted.evaluate(feedback, blank, with_format=False)
    values[COMBINED] = [sample.combined for sample in combined]
    return values


def weighted_sum(
    values: dict[str, list[float | None]], weights: dict[str, float], intercept: float = 0.0
) -> list[float | None]:
    """``intercept + Σ weight·value`` per item (stage 2's formula); None where a weighted value
    is missing."""
    sums: list[float | None] = []
    for index in range(len(next(iter(values.values())))):
        parts = [(w, values[name][index]) for name, w in weights.items() if w]
        if any(value is None for _, value in parts):
            sums.append(None)
            continue
        sums.append(intercept + sum(w * float(v) for w, v in parts if v is not None))
    return sums


def validity_table(
    config: Any,
    path: Path,
    bootstrap_samples: int = 1000,
    alternatives: dict[str, dict[str, float]] | None = None,
) -> tuple[str, int, list[ValidityRow]]:
    """``(kind, items, rows)``: each reward's AUC (points) or pairwise accuracy (pairs).

    ``alternatives`` adds one row per named weighting of the same components (the same scores,
    so another weighting costs no scoring): what a changed ``rl.reward_weights`` would rank."""
    kind, items = read_labelled(path)
    if kind == "points":
        instructions = [item.instruction for item in items]
        instances = [ParsedInstance(item.input, item.output) for item in items]
    else:  # a pair is two instances of one prompt: the chosen answer, then the rejected one
        instructions = [item.instruction for item in items for _ in range(2)]
        instances = [
            ParsedInstance("", answer.strip())
            for item in items
            for answer in (item.output, item.rejected or "")
        ]
    values = component_values(config, instructions, instances)
    for name, alternative in (alternatives or {}).items():
        unknown = sorted(set(alternative) - set(values))
        if unknown:
            raise UserError(f"weights {name}: unknown rewards {unknown}; known: {sorted(values)}")
        values[name] = weighted_sum(values, alternative)
    weights = config.rl.reward_weights
    seed = config.run.seed
    rows = []
    for name, column in values.items():
        if kind == "points":
            usable = [(v, item.label) for v, item in zip(column, items, strict=True)]
            usable = [(v, bool(label)) for v, label in usable if v is not None]
            if len({label for _, label in usable}) < 2:
                continue
            scores = np.array([v for v, _ in usable])
            labels = np.array([label for _, label in usable])

            def statistic(index: np.ndarray, s=scores, y=labels) -> float | None:
                return auc(s[index], y[index]) if 0 < y[index].sum() < len(index) else None

            value = auc(scores, labels)
        else:
            pairs = [(column[2 * i], column[2 * i + 1]) for i in range(len(items))]
            usable_pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not usable_pairs:
                continue
            chosen = np.array([a for a, _ in usable_pairs])
            rejected = np.array([b for _, b in usable_pairs])

            def statistic(index: np.ndarray, a=chosen, b=rejected) -> float | None:
                return pairwise_accuracy(a[index], b[index])

            value = pairwise_accuracy(chosen, rejected)
            usable = usable_pairs
        interval = bootstrap_interval(statistic, len(usable), bootstrap_samples, seed)
        is_sum = name == COMBINED or name in (alternatives or {})
        weight = None if is_sum else float(weights.get(name, 0.0))
        rows.append(ValidityRow(name, weight, value, interval, len(usable)))
    return kind, len(items), rows


def render_table(kind: str, items: int, rows: Sequence[ValidityRow], source: str) -> str:
    """The table as Markdown, with a line saying how to read it."""
    measure = "AUC" if kind == "points" else "pairwise accuracy"
    lines = [
        f"Reward validity on {source}: {items} labelled "
        + ("instances" if kind == "points" else "preference pairs")
        + f"; {measure} with a 95% bootstrap interval (0.5: no signal; below: ranked backwards).",
        "",
        f"| reward | weight | {measure} | 95% interval | scored |",
        "|---|---:|---:|---|---:|",
    ]
    for row in rows:
        weight = "weighted sum" if row.weight is None else f"{row.weight:g}"
        interval = (
            "n/a" if row.interval is None else f"{row.interval[0]:.2f} to {row.interval[1]:.2f}"
        )
        lines.append(f"| {row.name} | {weight} | {row.value:.3f} | {interval} | {row.scored} |")
    return "\n".join(lines) + "\n"


def run(
    config: Any,
    path: Path,
    bootstrap_samples: int = 1000,
    alternatives: dict[str, dict[str, float]] | None = None,
) -> str:
    """Score ``path`` and return the rendered table (``refineaf score --labels``)."""
    if bootstrap_samples < 0:
        raise UserError(f"--bootstrap must be >= 0, got {bootstrap_samples}")
    kind, items, rows = validity_table(config, path, bootstrap_samples, alternatives)
    return render_table(kind, items, rows, str(path))
