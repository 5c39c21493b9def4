"""Report of a ``refineaf eval`` run: tables (Markdown), plots (PNG) and numbers (JSON).

All numbers come from per-instance scores (``rougeL``, ``exact_match``; x100), so they are the
official aggregates: overall and per-category = mean over instances, per task = mean over the
task's instances. A row may hold several runs (one adapter per training seed, all scored on the
same instances); its scores are then means over its runs (per instance, per task, overall).

Next to the scores, per row: the share of **empty answers** (empty or whitespace only: a model
that opens with a blank line meets the ``"\\n\\n"`` stop at once and scores 0), ROUGE-L over the
non-empty answers only, and the mean length of the non-empty answers in **words**
(whitespace-separated). They separate "learned to answer at all" from "answers better".

Head-to-head (the paper's headline statistic): the share of tasks on which row A's ROUGE-L is
higher than row B's (ties are not wins), and the overall ROUGE-L difference, each with 95%
bootstrap intervals that answer different questions:

* **instances within tasks** (paired): each resample draws, within every task, instances with
  replacement -- the same draw for both rows. Question: with these tasks and these trained
  adapters, how much does the result depend on which instances each task happens to have?
  Narrow whenever tasks have many instances, however few tasks there are.
* **tasks**: each resample draws tasks with replacement (per-task scores fixed). Question: on
  another set of tasks like these -- the paper's unit -- would A still win about this share?
* **tasks and runs** (only when a row has several runs): each resample draws tasks and, for
  every row independently, its runs with replacement, and recomputes the per-task means over the
  drawn runs. Question: would it hold on other tasks *and* with other training seeds? Runs are
  drawn independently per row, which ignores any pairing of seeds between rows (conservative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refine_af.storage import write_json_atomic, write_text_atomic

Record = Mapping[str, Any]
Runs = Sequence[Sequence[Record]]
METRICS = ("rougeL", "exact_match")
LEVEL = 0.95
INTERVALS = {
    "instances": (
        "instances within tasks",
        "same tasks, same trained adapters: how much does it depend on which instances each "
        "task happens to have?",
    ),
    "tasks": (
        "tasks",
        "another set of tasks like these (the paper's unit): would the share of tasks won hold?",
    ),
    "tasks_runs": (
        "tasks and runs",
        "other tasks and other training runs (seeds) of each row: would it hold?",
    ),
}


# ---------------------------------------------------------------------------------------------
# Maths.


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def overall_score(records: Sequence[Record], metric: str = "rougeL") -> float:
    """Mean over all instances."""
    return _mean([r[metric] for r in records])


def grouped_scores(records: Sequence[Record], key: str, metric: str = "rougeL") -> dict[str, float]:
    """Mean over the instances of each group (``key``: "task" or "category"), first-seen order."""
    groups: dict[str, list[float]] = {}
    for record in records:
        groups.setdefault(record[key], []).append(record[metric])
    return {name: _mean(values) for name, values in groups.items()}


def win_counts(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, int]:
    """On how many common tasks ``a`` scores higher / the same / lower than ``b``."""
    common = [t for t in a if t in b]
    wins = sum(1 for t in common if a[t] > b[t])
    ties = sum(1 for t in common if a[t] == b[t])
    return {"wins": wins, "ties": ties, "losses": len(common) - wins - ties, "tasks": len(common)}


def as_runs(row: Sequence[Record] | Runs) -> list[list[Record]]:
    """A row given as one list of records (one run) or as a list of runs, as a list of runs."""
    if len(row) and isinstance(row[0], Mapping):
        return [list(row)]  # type: ignore[arg-type]
    return [list(run) for run in row]  # type: ignore[union-attr]


def _instance_keys(records: Sequence[Record]) -> list[tuple[str, str]]:
    return [(r["task"], r["id"]) for r in records]


def average_runs(runs: Runs) -> list[dict[str, Any]]:
    """Per-instance scores averaged over a row's runs (all runs must have the same instances)."""
    first = runs[0]
    keys = _instance_keys(first)
    for run in runs[1:]:
        if sorted(_instance_keys(run)) != sorted(keys):
            raise ValueError(
                "the runs of a row were scored on different instances: evaluate every run "
                "with the same tasks and limit"
            )
    if len(runs) == 1:
        return [{k: r[k] for k in ("task", "category", "id", *METRICS) if k in r} for r in first]
    by_key = [{(r["task"], r["id"]): r for r in run} for run in runs]
    averaged = []
    for record in first:
        key = (record["task"], record["id"])
        entry = {k: record[k] for k in ("task", "category", "id") if k in record}
        for metric in METRICS:
            entry[metric] = float(np.mean([run[key][metric] for run in by_key]))
        averaged.append(entry)
    return averaged


def answer_stats(records: Sequence[Record]) -> dict[str, float]:
    """Empty-answer share, ROUGE-L of the non-empty answers, words per non-empty answer."""
    predictions = [str(r.get("prediction", "")) for r in records]
    nonempty = [r for r, p in zip(records, predictions, strict=True) if p.strip()]
    return {
        "empty_share": 1 - len(nonempty) / len(records) if records else math.nan,
        "rougeL_nonempty": _mean([r["rougeL"] for r in nonempty]),
        "words_nonempty": _mean([len(p.split()) for p in predictions if p.strip()]),
    }


def task_matrix(runs: Runs, metric: str = "rougeL") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Tasks (first-seen order), instances per task, and per-task means, one row per run."""
    tasks = list(grouped_scores(runs[0], "task", metric))
    counts = np.zeros(len(tasks))
    for record in runs[0]:
        counts[tasks.index(record["task"])] += 1
    matrix = np.zeros((len(runs), len(tasks)))
    for i, run in enumerate(runs):
        scores = grouped_scores(run, "task", metric)
        if set(scores) != set(tasks):
            raise ValueError("the runs of a row cover different tasks")
        matrix[i] = [scores[t] for t in tasks]
    return tasks, counts, matrix


def _percentiles(values: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def paired_bootstrap(
    records_a: Sequence[Record],
    records_b: Sequence[Record],
    samples: int = 1000,
    seed: int = 1234,
    metric: str = "rougeL",
    level: float = LEVEL,
) -> dict[str, Any]:
    """Instance-level paired bootstrap of A vs B (instances resampled within each task).

    Returns ``share`` (tasks where A > B / tasks), ``delta`` (overall A - B), each with
    ``*_ci = [low, high]`` at ``level``; plus the win/tie/loss counts.
    """
    b_by_id = {(r["task"], r["id"]): r[metric] for r in records_b}
    if {(r["task"], r["id"]) for r in records_a} != set(b_by_id):
        raise ValueError(
            "the two rows were scored on different instances: run them with the same tasks "
            "and limit"
        )
    grouped: dict[str, tuple[list[float], list[float]]] = {}
    for r in records_a:
        pair = grouped.setdefault(r["task"], ([], []))
        pair[0].append(r[metric])
        pair[1].append(b_by_id[(r["task"], r["id"])])
    per_task = {t: (np.asarray(x, float), np.asarray(y, float)) for t, (x, y) in grouped.items()}
    a_means = {t: float(x.mean()) for t, (x, _) in per_task.items()}
    b_means = {t: float(y.mean()) for t, (_, y) in per_task.items()}
    counts = win_counts(a_means, b_means)
    total = sum(len(x) for x, _ in per_task.values())
    delta = sum(float(x.sum() - y.sum()) for x, y in per_task.values()) / total
    result: dict[str, Any] = {
        **counts,
        "share": counts["wins"] / counts["tasks"],
        "delta": delta,
        "bootstrap_samples": samples,
    }
    if samples <= 0:
        result["share_ci"] = result["delta_ci"] = [math.nan, math.nan]
        return result
    rng = np.random.default_rng(seed)
    wins = np.zeros(samples)
    diff_sums = np.zeros(samples)
    for x, y in per_task.values():
        idx = rng.integers(0, len(x), size=(samples, len(x)))  # same draw for both rows
        xa, ya = x[idx], y[idx]
        wins += xa.mean(axis=1) > ya.mean(axis=1)
        diff_sums += xa.sum(axis=1) - ya.sum(axis=1)
    result["share_ci"] = _percentiles(wins / len(per_task), level)
    result["delta_ci"] = _percentiles(diff_sums / total, level)
    return result


def task_bootstrap(
    runs_a: Runs,
    runs_b: Runs,
    samples: int = 1000,
    seed: int = 1234,
    metric: str = "rougeL",
    level: float = LEVEL,
    resample_runs: bool = False,
) -> dict[str, Any]:
    """Bootstrap over tasks (and, with ``resample_runs``, over each row's runs) of A vs B.

    Point estimates use each row's per-task score = mean over its runs of the task's mean.
    ``delta`` is the instance-weighted overall difference (the overall ROUGE-L difference).
    """
    tasks_a, counts, matrix_a = task_matrix(runs_a, metric)
    tasks_b, _, matrix_b = task_matrix(runs_b, metric)
    if tasks_a != tasks_b:
        if sorted(tasks_a) != sorted(tasks_b):
            raise ValueError("the two rows cover different tasks: run them with the same tasks")
        matrix_b = matrix_b[:, [tasks_b.index(t) for t in tasks_a]]
    a, b = matrix_a.mean(axis=0), matrix_b.mean(axis=0)
    counts_ab = win_counts(dict(zip(tasks_a, a, strict=True)), dict(zip(tasks_a, b, strict=True)))
    result: dict[str, Any] = {
        **counts_ab,
        "share": counts_ab["wins"] / counts_ab["tasks"],
        "delta": float((counts * (a - b)).sum() / counts.sum()),
        "bootstrap_samples": samples,
        "per_task_delta": {t: float(x - y) for t, x, y in zip(tasks_a, a, b, strict=True)},
    }
    if samples <= 0:
        result["share_ci"] = result["delta_ci"] = [math.nan, math.nan]
        return result
    rng = np.random.default_rng(seed)
    n_tasks = len(tasks_a)
    idx = rng.integers(0, n_tasks, size=(samples, n_tasks))
    if resample_runs:
        draw_a = rng.integers(0, len(matrix_a), size=(samples, len(matrix_a)))
        draw_b = rng.integers(0, len(matrix_b), size=(samples, len(matrix_b)))
        a_s = matrix_a[draw_a].mean(axis=1)  # (samples, tasks): per-task means over drawn runs
        b_s = matrix_b[draw_b].mean(axis=1)
    else:
        a_s = np.broadcast_to(a, (samples, n_tasks))
        b_s = np.broadcast_to(b, (samples, n_tasks))
    a_t = np.take_along_axis(a_s, idx, axis=1)
    b_t = np.take_along_axis(b_s, idx, axis=1)
    n_t = counts[idx]
    result["share_ci"] = _percentiles((a_t > b_t).mean(axis=1), level)
    result["delta_ci"] = _percentiles((n_t * (a_t - b_t)).sum(axis=1) / n_t.sum(axis=1), level)
    return result


def compare_pair(
    runs_a: Runs, runs_b: Runs, bootstrap_samples: int = 1000, seed: int = 1234
) -> dict[str, Any]:
    """A vs B: counts, share, delta and every interval that applies."""
    tasks = task_bootstrap(runs_a, runs_b, bootstrap_samples, seed)
    instances = paired_bootstrap(
        average_runs(runs_a), average_runs(runs_b), bootstrap_samples, seed
    )
    intervals = {
        "instances": {"share": instances["share_ci"], "delta": instances["delta_ci"]},
        "tasks": {"share": tasks["share_ci"], "delta": tasks["delta_ci"]},
    }
    if len(runs_a) > 1 or len(runs_b) > 1:
        both = task_bootstrap(runs_a, runs_b, bootstrap_samples, seed, resample_runs=True)
        intervals["tasks_runs"] = {"share": both["share_ci"], "delta": both["delta_ci"]}
    return {
        **{k: tasks[k] for k in ("wins", "ties", "losses", "tasks", "share", "delta")},
        "runs": [len(runs_a), len(runs_b)],
        "bootstrap_samples": bootstrap_samples,
        "level": LEVEL,
        "intervals": intervals,
        # Kept under the old names: the instance-level interval.
        "share_ci": instances["share_ci"],
        "delta_ci": instances["delta_ci"],
        "per_task_delta": tasks["per_task_delta"],
    }


def summarize(rows: Mapping[str, Sequence[Record] | Runs]) -> dict[str, Any]:
    """Overall, per-category and per-task scores and answer statistics of every row."""
    summary: dict[str, Any] = {}
    for name, row in rows.items():
        runs = as_runs(row)
        records = average_runs(runs)
        per_run = [
            {**{m: overall_score(run, m) for m in METRICS}, **answer_stats(run)} for run in runs
        ]
        pooled = answer_stats([r for run in runs for r in run])
        summary[name] = {
            "runs": len(runs),
            "instances": len(records),
            "tasks": len({r["task"] for r in records}),
            **{m: overall_score(records, m) for m in METRICS},
            **pooled,
            "categories": {m: grouped_scores(records, "category", m) for m in METRICS},
            "per_task": {m: grouped_scores(records, "task", m) for m in METRICS},
            "per_run": per_run,
        }
    return summary


def compare_rows(
    rows: Mapping[str, Sequence[Record] | Runs],
    pairs: Sequence[tuple[str, str]],
    bootstrap_samples: int = 1000,
    seed: int = 1234,
) -> dict[str, Any]:
    """Head-to-head statistics of each pair (key ``"a_vs_b"``)."""
    comparisons = {}
    for a, b in pairs:
        stats = compare_pair(as_runs(rows[a]), as_runs(rows[b]), bootstrap_samples, seed)
        comparisons[f"{a}_vs_{b}"] = {"a": a, "b": b, **stats}
    return comparisons


# ---------------------------------------------------------------------------------------------
# Output.


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _plots(summary: dict[str, Any], comparisons: dict[str, Any], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers / CI
    import matplotlib.pyplot as plt

    names = list(summary)
    files = []
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.5))
    width = 0.38
    xs = np.arange(len(names))
    for offset, metric, label in (
        (-width / 2, "rougeL", "ROUGE-L"),
        (width / 2, "exact_match", "exact match"),
    ):
        ax.bar(xs + offset, [summary[n][metric] for n in names], width, label=label)
    ax.set_xticks(xs, names)
    ax.set_ylabel("score (x100)")
    ax.set_title("SuperNI overall")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "overall.png", dpi=110)
    plt.close(fig)
    files.append("overall.png")

    categories = list(summary[names[0]]["categories"]["rougeL"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(categories) + 2), 4))
    width = 0.8 / len(names)
    xs = np.arange(len(categories))
    for i, name in enumerate(names):
        values = [summary[name]["categories"]["rougeL"].get(c, math.nan) for c in categories]
        ax.bar(xs + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(xs, categories, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("ROUGE-L")
    ax.set_title("SuperNI per category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "categories.png", dpi=110)
    plt.close(fig)
    files.append("categories.png")

    for key, comp in comparisons.items():
        deltas = sorted(comp["per_task_delta"].items(), key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(7, max(3, 0.16 * len(deltas) + 1)))
        ax.barh(
            range(len(deltas)),
            [d for _, d in deltas],
            color=["tab:green" if d > 0 else "tab:red" for _, d in deltas],
        )
        ax.set_yticks(range(len(deltas)), [t for t, _ in deltas], fontsize=5)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_xlabel(f"ROUGE-L delta ({comp['a']} - {comp['b']})")
        ax.set_title(f"{comp['a']} vs {comp['b']}: wins on {comp['wins']}/{comp['tasks']} tasks")
        fig.tight_layout()
        name = f"delta_{key}.png"
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def render_markdown(
    summary: dict[str, Any], comparisons: dict[str, Any], title: str, plots: bool = True
) -> str:
    """The report text (tables use ROUGE-L unless labelled)."""
    names = list(summary)
    lines = [f"# {title}", ""]
    lines += [
        "Official SuperNI metric (ROUGE-L F, `rouge_score` with stemming, and exact match; max "
        "over references; x100). Overall and per-category scores are means over instances; a "
        "row with several runs (one adapter per training seed) shows means over its runs.",
        "",
        "## Overall",
        "",
        "Empty: share of answers that are empty or whitespace only (they score 0). Non-empty "
        "ROUGE-L and words: over the non-empty answers only; words are whitespace-separated.",
        "",
        "| row | runs | ROUGE-L | exact match | empty | non-empty ROUGE-L | words | tasks | "
        "instances |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        s = summary[n]
        lines.append(
            f"| {n} | {s['runs']} | {_fmt(s['rougeL'])} | {_fmt(s['exact_match'])} | "
            f"{_pct(s['empty_share'])} | {_fmt(s['rougeL_nonempty'])} | "
            f"{_fmt(s['words_nonempty'], 1)} | {s['tasks']} | {s['instances']} |"
        )
    if any(summary[n]["runs"] > 1 for n in names):
        lines += [
            "",
            "Per run:",
            "",
            "| row | run | ROUGE-L | exact match | empty |",
            "|---|---:|---:|---:|---:|",
        ]
        for n in names:
            for i, run in enumerate(summary[n]["per_run"], 1):
                lines.append(
                    f"| {n} | {i} | {_fmt(run['rougeL'])} | {_fmt(run['exact_match'])} | "
                    f"{_pct(run['empty_share'])} |"
                )
    if plots:
        lines += ["", "![overall](overall.png)"]
    lines += [
        "",
        "## Per category (ROUGE-L)",
        "",
        "| category | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for category in summary[names[0]]["categories"]["rougeL"]:
        values = [_fmt(summary[n]["categories"]["rougeL"].get(category, math.nan)) for n in names]
        lines.append(f"| {category} | " + " | ".join(values) + " |")
    if plots:
        lines += ["", "![categories](categories.png)"]
    if comparisons:
        lines += [
            "",
            "## Head to head",
            "",
            "Tasks won: tasks on which the first row's ROUGE-L is higher (ties are not wins). "
            "Each interval is a 95% bootstrap interval and answers its own question: "
            "**instances within tasks** (paired) -- with these tasks and these trained adapters, "
            "how much does it depend on which instances each task happens to have? "
            "**tasks** -- on another set of tasks like these (the paper's unit), would the share "
            "hold? **tasks and runs** (rows with several runs) -- with other tasks and other "
            "training seeds? The task-level interval is the one to read for the paper's claim.",
        ]
    for key, c in comparisons.items():
        lines += [
            "",
            f"## {c['a']} vs {c['b']}",
            "",
            f"- **{c['a']} beats {c['b']} on {c['wins']} of {c['tasks']} tasks "
            f"({100 * c['share']:.1f}%)**; ties {c['ties']}, losses {c['losses']}.",
            f"- Overall ROUGE-L difference {c['delta']:+.2f}.",
            "",
            "| 95% interval over | tasks won | ROUGE-L difference |",
            "|---|---:|---:|",
        ]
        for kind, bounds in c["intervals"].items():
            lo, hi = bounds["share"]
            dlo, dhi = bounds["delta"]
            lines.append(
                f"| {INTERVALS[kind][0]} | {_pct(lo)} to {_pct(hi)} | {dlo:+.2f} to {dhi:+.2f} |"
            )
        lines += [
            "",
            f"({c['bootstrap_samples']} resamples each.)",
            "",
            "| task | " + c["a"] + " | " + c["b"] + " | delta |",
            "|---|---:|---:|---:|",
        ]
        for task, delta in sorted(c["per_task_delta"].items(), key=lambda kv: -kv[1]):
            a_score = summary[c["a"]]["per_task"]["rougeL"][task]
            b_score = summary[c["b"]]["per_task"]["rougeL"][task]
            lines.append(f"| {task} | {_fmt(a_score)} | {_fmt(b_score)} | {delta:+.2f} |")
        if plots:
            lines += ["", f"![delta](delta_{key}.png)"]
    lines += [
        "",
        "## Per task (ROUGE-L)",
        "",
        "| task | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for task in summary[names[0]]["per_task"]["rougeL"]:
        values = [_fmt(summary[n]["per_task"]["rougeL"].get(task, math.nan)) for n in names]
        lines.append(f"| {task} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    rows: Mapping[str, Sequence[Record] | Runs],
    folder: Path,
    pairs: Sequence[tuple[str, str]] = (),
    bootstrap_samples: int = 1000,
    seed: int = 1234,
    title: str = "SuperNI evaluation",
) -> Path:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``folder``.

    A row is one list of per-instance records, or a list of such lists (one per run).
    """
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    comparisons = compare_rows(rows, pairs, bootstrap_samples, seed)
    _plots(summary, comparisons, folder)
    write_json_atomic(folder / "report.json", {"summary": summary, "comparisons": comparisons})
    path = folder / "report.md"
    write_text_atomic(path, render_markdown(summary, comparisons, title))
    return path
