"""The default comparison at several seeds, with the paper's filters and with the judges.

Run by hand from the repository root (offline: set ``REFINEAF_SEED_TASKS`` and
``REFINEAF_SUPERNI_DATA`` as for ``refineaf train``)::

    python benchmarks/study.py                       # 3 seeds x 2 filter settings, then the eval
    python benchmarks/study.py --seeds 1 2 --limit 5 --set rl.max_steps=8
    python benchmarks/study.py --jobs 2              # two trainings at a time, one thread each

For each seed and each filter setting it runs ``refineaf train -c default`` into
``OUT/<setting>-seed<N>`` (a finished stage is skipped, so an interrupted study resumes where it
stopped):

* ``judges``: the default config as shipped (instruction judge, output judge, near-copy filter,
  the ``keepable`` reward), variants refine_af, baseline and seeds_only;
* ``paper``: the same with the paper's filters only (judges and near-copy filter off,
  ``keepable`` weight 0), variants refine_af and baseline (seeds_only does not depend on the
  filters: it is trained once per seed, in the ``judges`` runs).

Then one ``refineaf eval`` on the default eval config's 30 offline tasks, ``--limit`` instances
each, with one row per variant and setting whose adapter list holds every seed's adapter (the
report pools a row's runs and adds task-and-seed intervals), and a table of each run's data
counts (kept instructions, statements judged out, instances kept per filter) next to it in
``OUT/study.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SETTINGS: dict[str, list[str]] = {
    "judges": [],
    "paper": [
        "generate_instructions.instruction_judge=null",
        "generate_instances.output_judge=null",
        "generate_instances.near_copy_threshold=null",
        "rl.reward_weights.keepable=0",
        "pipeline.variants=[refine_af,baseline]",
    ],
}


def refineaf(*arguments: str, log: Path, threads: int | None) -> float:
    """Run one refineaf command of this checkout; its output goes to ``log``; return seconds."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, "-c", "from refine_af.cli import cli; cli()", *arguments]
    started = time.perf_counter()
    with log.open("a") as output:
        result = subprocess.run(command, cwd=REPO, env=env, stdout=output, stderr=output)
    if result.returncode:
        raise SystemExit(f"{' '.join(arguments[:3])} failed (exit {result.returncode}): see {log}")
    return time.perf_counter() - started


def train(out: Path, setting: str, seed: int, extra: list[str], threads: int | None) -> float:
    run = out / f"{setting}-seed{seed}"
    overrides = [f"run.output_dir={run}", f"run.seed={seed}", *SETTINGS[setting], *extra]
    print(f"train {run.name}: {' '.join(overrides[2:]) or 'default config'}", flush=True)
    seconds = refineaf(
        "train", "-c", "default", *overrides, log=out / f"{run.name}.log", threads=threads
    )
    print(f"  {run.name} done in {seconds / 60:.1f} min", flush=True)
    return seconds


def eval_config(out: Path, seeds: list[int], limit: int) -> Path:
    packaged = yaml.safe_load((REPO / "eval_configs" / "default.yaml").read_text())
    rows: list[dict[str, object]] = [{"name": "vanilla"}]
    variants = {
        "judges": ["seeds_only", "baseline", "refine_af"],
        "paper": ["baseline", "refine_af"],
    }
    for setting, names in variants.items():
        for variant in names:
            adapters = [
                str(out / f"{setting}-seed{seed}" / "sft" / variant / "adapter") for seed in seeds
            ]
            name = variant if variant == "seeds_only" else f"{variant}_{setting}"
            rows.append({"name": name, "adapter": adapters if len(adapters) > 1 else adapters[0]})
    config = {
        **packaged,
        "rows": rows,
        "limit": limit,
        # One lm-eval call for all tasks: per-call start-up dominated small evals.
        "tasks_per_chunk": len(packaged["tasks"]),
        "output_dir": str(out / "eval"),
    }
    path = out / "eval.yaml"
    path.write_text(
        "# refineaf eval -c " + str(path) + "\n" + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def copies_kept(run: Path, variant: str) -> int | None:
    """Kept instances whose input or output holds a demonstration of the instance prompts
    (ROUGE-L recall > 0.5, the default near-copy test), whether or not the filter was on."""
    from refine_af.judges import NEAR_COPY_THRESHOLD, NearCopy
    from refine_af.prompts import INSTANCE_DEMONSTRATION_TEXTS
    from refine_af.storage import read_records

    path = run / "instances" / variant / "instances.jsonl"
    if not path.is_file():
        return None
    test = NearCopy(INSTANCE_DEMONSTRATION_TEXTS, NEAR_COPY_THRESHOLD)
    return sum(
        1 for row in read_records(path) if test(row.get("output", "")) or test(row.get("input", ""))
    )


def data_counts(run: Path) -> dict[str, object]:
    card = json.loads((run / "data_card.json").read_text())
    instructions = card.get("instructions") or {}
    counts: dict[str, object] = {
        "instructions kept": instructions.get("kept"),
        "not a task (judge)": (instructions.get("dropped") or {}).get("not_a_task", 0),
    }
    for variant, summary in (card.get("instances") or {}).items():
        summary = summary or {}
        dropped = summary.get("dropped") or {}
        counts[f"{variant}: instances kept"] = summary.get("kept")
        counts[f"{variant}: near copies dropped"] = dropped.get("near_copy_of_demonstration", 0)
        counts[f"{variant}: not carried out (judge)"] = dropped.get("not_carried_out", 0)
        counts[f"{variant}: kept copies of a demonstration"] = copies_kept(run, variant)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--limit", type=int, default=10, help="instances per task in the eval")
    parser.add_argument(
        "--set", dest="extra", action="append", default=[], help="override (all runs)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="trainings at a time")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.jobs > 1 else None
    started = time.perf_counter()
    print(
        f"study in {args.out}; seeds {args.seeds}; eval limit {args.limit}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    runs = [(setting, seed) for seed in args.seeds for setting in SETTINGS]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda job: train(args.out, *job, args.extra, threads), runs))
    trained = time.perf_counter() - started
    lines = [f"# Study: seeds {args.seeds}, eval limit {args.limit}", ""]
    table = {
        f"{setting}-seed{seed}": data_counts(args.out / f"{setting}-seed{seed}")
        for setting, seed in runs
    }
    keys = sorted(
        {k for counts in table.values() for k in counts}, key=lambda k: (k.split(":")[0], k)
    )
    lines += ["| count | " + " | ".join(table) + " |", "|---|" + "---:|" * len(table)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(str(table[r].get(key, "")) for r in table) + " |")
    if not args.skip_eval:
        config = eval_config(args.out, args.seeds, args.limit)
        seconds = refineaf("eval", "-c", str(config), log=args.out / "eval.log", threads=None)
        lines += ["", f"Eval: {seconds / 60:.1f} min; report in {args.out / 'eval'}."]
    total = time.perf_counter() - started
    lines += [
        "",
        f"Training {trained / 60:.1f} min, total {total / 60:.1f} min "
        f"(load at end {os.getloadavg()[0]:.2f}).",
    ]
    (args.out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
