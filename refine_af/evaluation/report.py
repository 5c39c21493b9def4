"""Report of a ``refineaf eval`` run: tables (Markdown), plots (PNG) and numbers (JSON).

All numbers come from per-instance scores (``rougeL``, ``exact_match``; x100), so they are the
official aggregates: overall and per-category = mean over instances, per task = mean over the
task's instances.

Head-to-head (the paper's headline statistic): the share of tasks on which row A's ROUGE-L is
higher than row B's (ties are not wins), with a **paired bootstrap** 95% interval: each resample
draws, within every task, instances with replacement -- the same draw for both rows -- and
recomputes the per-task means, the share of tasks won and the overall difference. The interval
says how much the statistic depends on which instances of each task were evaluated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Record = Mapping[str, Any]
METRICS = ("rougeL", "exact_match")


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


def _paired_arrays(
    records_a: Sequence[Record], records_b: Sequence[Record], metric: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task, the two rows' scores on the same instances, aligned by id."""
    b_by_id = {(r["task"], r["id"]): r[metric] for r in records_b}
    a_ids = {(r["task"], r["id"]) for r in records_a}
    if a_ids != set(b_by_id):
        raise ValueError(
            "the two rows were scored on different instances: run them with the same tasks "
            "and limit"
        )
    tasks: dict[str, tuple[list[float], list[float]]] = {}
    for r in records_a:
        pair = tasks.setdefault(r["task"], ([], []))
        pair[0].append(r[metric])
        pair[1].append(b_by_id[(r["task"], r["id"])])
    return {
        t: (np.asarray(x, dtype=float), np.asarray(y, dtype=float)) for t, (x, y) in tasks.items()
    }


def paired_bootstrap(
    records_a: Sequence[Record],
    records_b: Sequence[Record],
    samples: int = 1000,
    seed: int = 1234,
    metric: str = "rougeL",
    level: float = 0.95,
) -> dict[str, Any]:
    """Point estimates and paired-bootstrap intervals of A vs B.

    Returns ``share`` (tasks where A > B / tasks), ``delta`` (overall A - B), each with
    ``*_ci = [low, high]`` at ``level``; plus the win/tie/loss counts.
    """
    per_task = _paired_arrays(records_a, records_b, metric)
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
    tail = (1 - level) / 2 * 100
    shares = wins / len(per_task)
    deltas = diff_sums / total
    result["share_ci"] = [
        float(np.percentile(shares, tail)),
        float(np.percentile(shares, 100 - tail)),
    ]
    result["delta_ci"] = [
        float(np.percentile(deltas, tail)),
        float(np.percentile(deltas, 100 - tail)),
    ]
    return result


def summarize(rows: Mapping[str, Sequence[Record]]) -> dict[str, Any]:
    """Overall, per-category and per-task scores of every row."""
    summary: dict[str, Any] = {}
    for name, records in rows.items():
        summary[name] = {
            "instances": len(records),
            "tasks": len({r["task"] for r in records}),
            **{m: overall_score(records, m) for m in METRICS},
            "categories": {m: grouped_scores(records, "category", m) for m in METRICS},
            "per_task": {m: grouped_scores(records, "task", m) for m in METRICS},
        }
    return summary


# ---------------------------------------------------------------------------------------------
# Output.


def _fmt(value: float, digits: int = 2) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


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
        "over references; x100). Overall and per-category scores are means over instances.",
        "",
        "## Overall",
        "",
        "| row | ROUGE-L | exact match | tasks | instances |",
        "|---|---:|---:|---:|---:|",
    ]
    for n in names:
        s = summary[n]
        lines.append(
            f"| {n} | {_fmt(s['rougeL'])} | {_fmt(s['exact_match'])} | {s['tasks']} | "
            f"{s['instances']} |"
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
    for key, c in comparisons.items():
        lo, hi = c["share_ci"]
        dlo, dhi = c["delta_ci"]
        lines += [
            "",
            f"## {c['a']} vs {c['b']}",
            "",
            f"- **{c['a']} beats {c['b']} on {c['wins']} of {c['tasks']} tasks "
            f"({100 * c['share']:.1f}%; 95% paired-bootstrap CI {100 * lo:.1f}-{100 * hi:.1f}%)**"
            f"; ties {c['ties']}, losses {c['losses']}.",
            f"- Overall ROUGE-L difference {c['delta']:+.2f} (95% CI {dlo:+.2f} to {dhi:+.2f}; "
            f"{c['bootstrap_samples']} resamples of instances within tasks).",
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


def compare_rows(
    rows: Mapping[str, Sequence[Record]],
    pairs: Sequence[tuple[str, str]],
    bootstrap_samples: int = 1000,
    seed: int = 1234,
) -> dict[str, Any]:
    """Head-to-head statistics of each pair (key ``"a_vs_b"``)."""
    comparisons = {}
    for a, b in pairs:
        stats = paired_bootstrap(rows[a], rows[b], bootstrap_samples, seed)
        a_tasks = grouped_scores(rows[a], "task")
        b_tasks = grouped_scores(rows[b], "task")
        stats["per_task_delta"] = {t: a_tasks[t] - b_tasks[t] for t in a_tasks if t in b_tasks}
        comparisons[f"{a}_vs_{b}"] = {"a": a, "b": b, **stats}
    return comparisons


def write_report(
    rows: Mapping[str, Sequence[Record]],
    folder: Path,
    pairs: Sequence[tuple[str, str]] = (),
    bootstrap_samples: int = 1000,
    seed: int = 1234,
    title: str = "SuperNI evaluation",
) -> Path:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    comparisons = compare_rows(rows, pairs, bootstrap_samples, seed)
    _plots(summary, comparisons, folder)
    (folder / "report.json").write_text(
        json.dumps({"summary": summary, "comparisons": comparisons}, indent=2) + "\n"
    )
    path = folder / "report.md"
    path.write_text(render_markdown(summary, comparisons, title))
    return path
