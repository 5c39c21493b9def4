"""How well the stage-1 instruction judge separates tasks from statements, per threshold.

Run by hand from the repository root::

    python benchmarks/instruction_judge.py                        # the embedded default judge
    python benchmarks/instruction_judge.py --evaluator PATH_OR_ID  # another causal evaluator
    python benchmarks/instruction_judge.py --reference  # also every prompt in full: the speed-up

The labelled set (``benchmarks/data/stage1_candidates.jsonl``) is what stage 1 of the embedded
default kept with Self-Instruct's filters alone in the study's two seeds (``paper-seed1`` and
``paper-seed2``, ``generate_instructions.num_instructions=40``), each labelled by hand:
``task: true`` for an instruction someone could carry out ("Extract all the place names from the
paragraph.", "What is the best way to prepare for a marathon?"), ``false`` for statements,
fragments and assistant chatter ("It is about being yourself.", "I'm ready when you are.").

It prints the judge's AUC and, for each threshold, how many tasks and non-tasks would be kept and
the share of non-tasks among the kept: the numbers to choose
``generate_instructions.instruction_judge`` from, trading statements kept against yield.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LABELS = REPO / "benchmarks" / "data" / "stage1_candidates.jsonl"
THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def auc(positives: list[float], negatives: list[float]) -> float:
    """Probability that a random task scores above a random non-task (ties count half)."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    return sum(pairs) / len(pairs) if pairs else float("nan")  # one class only: undefined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--evaluator", default="default", help="causal evaluator (rl.evaluator)")
    parser.add_argument("--scores", type=Path, help="also write the scores here (JSON lines)")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also score every prompt in full (no shared few-shot prefix): time ratio and the "
        "largest difference in P(Yes)",
    )
    args = parser.parse_args()

    from refine_af.judges import load_judge
    from refine_af.train_config import load_config

    rows = [json.loads(line) for line in args.labels.read_text().splitlines() if line.strip()]
    # The judge exactly as stage 1 loads it from the default config (batch size, token limit,
    # chat template), on the chosen evaluator.
    config = load_config("default", [f"rl.evaluator={args.evaluator}", "rl.evaluator_kind=causal"])
    judge = load_judge(config)
    started = time.perf_counter()
    scores = judge.instruction_scores([row["instruction"] for row in rows])
    seconds = time.perf_counter() - started
    tasks = [s for s, row in zip(scores, rows, strict=True) if row["task"]]
    others = [s for s, row in zip(scores, rows, strict=True) if not row["task"]]
    print(
        f"{len(rows)} candidates ({len(tasks)} tasks, {len(others)} not); evaluator "
        f"{args.evaluator}; scored in {seconds:.1f} s; AUC {auc(tasks, others):.3f}"
    )
    print("| threshold | tasks kept | non-tasks kept | non-tasks among kept |")
    print("|---:|---:|---:|---:|")
    for threshold in THRESHOLDS:
        kept_tasks = sum(s >= threshold for s in tasks)
        kept_others = sum(s >= threshold for s in others)
        share = kept_others / max(1, kept_tasks + kept_others)
        print(
            f"| {threshold:.2f} | {kept_tasks} / {len(tasks)} | {kept_others} / {len(others)} "
            f"| {share:.0%} |"
        )
    if args.reference:
        from dataclasses import replace

        judge.scorer = replace(judge.scorer, share_prefix=False)
        started = time.perf_counter()
        whole = judge.instruction_scores([row["instruction"] for row in rows])
        whole_seconds = time.perf_counter() - started
        gap = max(abs(a - b) for a, b in zip(scores, whole, strict=True))
        flips = sum((a >= 0.5) != (b >= 0.5) for a, b in zip(scores, whole, strict=True))
        print(
            f"every prompt in full: {whole_seconds:.1f} s; shared prefix {seconds:.1f} s "
            f"({whole_seconds / seconds:.1f}x); largest P(Yes) difference {gap:.1e}; "
            f"decisions at 0.5 that differ: {flips}"
        )
    if args.scores:
        with args.scores.open("w") as handle:
            for score, row in zip(scores, rows, strict=True):
                handle.write(json.dumps({**row, "p_yes": round(score, 4)}) + "\n")


if __name__ == "__main__":
    main()
