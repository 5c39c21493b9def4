"""The default comparison at several seeds, with a size-matched control and the untouched rows.

Run by hand from the repository root (offline: set ``REFINEAF_SEED_TASKS`` and
``REFINEAF_SUPERNI_DATA`` as for ``refineaf train``)::

    python benchmarks/study.py                 # seeds 1 2 3: default and size175, then eval
    python benchmarks/study.py --seeds 1 --limit 5 --set rl.max_steps=4
    python benchmarks/study.py --settings default size175 paper
    # On a GPU: three seeds at once, float32 as on the CPU (run.dtype auto would pick bfloat16)
    python benchmarks/study.py --jobs 3 --threads 4 --set run.dtype=float32 \
        --eval-set dtype=float32 --eval-set batch_size=256 --eval-set token_budget=131072

For each seed and each setting it runs ``refineaf train -c default`` into
``OUT/<setting>-seed<N>`` (a finished stage is skipped, so an interrupted study resumes where it
stopped):

* ``default``: the default config as shipped, variants refine_af, baseline and seeds_only;
* ``size175``: the same data, fine-tuned on 175 instances per variant (``sft.max_train_instances``,
  drawn with the seed), the size of the seed set: seeds_only's 175 against the generated
  variants' 175 separates how much data from how good it is. It starts as a copy of the seed's
  ``default`` run without its adapters, so only the fine-tuning runs again (stage keys are by
  content, not path: a copy that lacks the RL adapter's weights would write its instances anew);
* ``paper``: the paper's filters only (judges and near-copy filter off, ``keepable`` weight 0),
  variants refine_af and baseline.

Then one ``refineaf eval`` on the default eval config's 30 offline tasks, ``--limit`` instances
each: vanilla and vanilla_chat (untouched, without and with the chat template; greedy, so one run
serves every seed) and one row per variant and setting whose adapter list holds every seed's
adapter (the report pools a row's runs and adds task-and-seed intervals). A table of each run's
data counts goes next to it in ``OUT/study.md``. docs/study.md has the last results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SEED_SET_SIZE = 175
SETTINGS: dict[str, list[str]] = {
    "default": [],
    "size175": [
        f"sft.max_train_instances={SEED_SET_SIZE}",
        "pipeline.variants=[refine_af,baseline]",
    ],
    "paper": [
        "generate_instructions.instruction_judge=null",
        "generate_instances.output_judge=null",
        "generate_instances.near_copy_threshold=null",
        "rl.reward_weights.keepable=0",
        "pipeline.variants=[refine_af,baseline]",
    ],
}
# The runs a setting starts from (a copy without adapters), so its shared stages are not redone.
STARTS_FROM = {"size175": "default"}
VARIANTS = {
    "default": ["seeds_only", "baseline", "refine_af"],
    "size175": ["baseline", "refine_af"],
    "paper": ["baseline", "refine_af"],
}


def refineaf(*arguments: str, log: Path, threads: int | None) -> float:
    """Run one refineaf command of this checkout; its output goes to ``log``; return seconds."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
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
    source = STARTS_FROM.get(setting)
    if source and not run.exists():
        # Everything but the adapters: the fine-tuning is what this setting changes.
        shutil.copytree(out / f"{source}-seed{seed}", run, ignore=shutil.ignore_patterns("sft"))
    overrides = [f"run.output_dir={run}", f"run.seed={seed}", *SETTINGS[setting], *extra]
    print(f"train {run.name}: {' '.join(overrides[2:]) or 'default config'}", flush=True)
    seconds = refineaf(
        "train", "-c", "default", *overrides, log=out / f"{run.name}.log", threads=threads
    )
    print(f"  {run.name} done in {seconds / 60:.1f} min", flush=True)
    return seconds


def train_seed(
    out: Path, seed: int, settings: list[str], extra: list[str], threads: int | None
) -> None:
    """One seed's runs, in order: a setting that starts from another runs after it."""
    for setting in sorted(settings, key=lambda s: s in STARTS_FROM):
        train(out, setting, seed, extra, threads)


def eval_config(
    out: Path, seeds: list[int], settings: list[str], limit: int, eval_set: dict[str, object]
) -> Path:
    packaged = yaml.safe_load((REPO / "eval_configs" / "default.yaml").read_text())
    # The default trains on chat turns (sft.text_format: chat), so adapter rows read the
    # prompt through the template, as vanilla_chat does; vanilla (plain prompt) is kept for
    # comparison with earlier studies.
    rows: list[dict[str, object]] = [
        {"name": "vanilla"},
        {"name": "vanilla_chat", "apply_chat_template": True},
    ]
    for setting in settings:
        for variant in VARIANTS[setting]:
            adapters = [
                str(out / f"{setting}-seed{seed}" / "sft" / variant / "adapter") for seed in seeds
            ]
            name = variant if setting == "default" else f"{variant}_{setting}"
            rows.append(
                {
                    "name": name,
                    "adapter": adapters if len(adapters) > 1 else adapters[0],
                    "apply_chat_template": True,
                }
            )
    config = {
        **packaged,
        "rows": rows,
        "limit": limit,
        # One lm-eval call for all tasks: per-call start-up dominated small evals.
        "tasks_per_chunk": len(packaged["tasks"]),
        "output_dir": str(out / "eval"),
        **eval_set,
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
        if variant in ("refine_af", "baseline"):
            counts[f"{variant}: completions"] = summary.get("completions")
            counts[f"{variant}: unparsed completions"] = summary.get("unparsed_completions")
            counts[f"{variant}: cut off"] = dropped.get("cut_off", 0)
            counts[f"{variant}: empty outputs"] = dropped.get("empty_output", 0)
            counts[f"{variant}: near copies dropped"] = dropped.get("near_copy_of_demonstration", 0)
            counts[f"{variant}: not carried out (judge)"] = dropped.get("not_carried_out", 0)
            counts[f"{variant}: kept copies of a demonstration"] = copies_kept(run, variant)
        counts[f"{variant}: instances kept"] = summary.get("kept")
        if summary.get("kept_without_input") is not None:
            counts[f"{variant}: kept without an input"] = summary["kept_without_input"]
        trained = ((card.get("sft") or {}).get(variant) or {}).get("examples")
        if trained is not None:
            counts[f"{variant}: fine-tuned on"] = trained
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--settings", nargs="+", choices=list(SETTINGS), default=["default", "size175"]
    )
    parser.add_argument("--limit", type=int, default=20, help="instances per task in the eval")
    parser.add_argument(
        "--set", dest="extra", action="append", default=[], help="override (all runs)"
    )
    parser.add_argument(
        "--eval-set",
        action="append",
        default=[],
        help="eval setting for this machine, key=value (e.g. batch_size=256)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at a time")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per training (default: 1 if jobs > 1)",
    )
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()
    for setting in args.settings:
        if STARTS_FROM.get(setting, setting) not in args.settings:
            parser.error(f"--settings {setting} starts from {STARTS_FROM[setting]}: add it")
    eval_set = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.eval_set)}
    args.out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or (1 if args.jobs > 1 else None)
    started = time.perf_counter()
    print(
        f"study in {args.out}; seeds {args.seeds}; settings {args.settings}; "
        f"eval limit {args.limit}; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        jobs = [
            pool.submit(train_seed, args.out, seed, args.settings, args.extra, threads)
            for seed in args.seeds
        ]
        for job in jobs:
            job.result()
    trained = time.perf_counter() - started
    lines = [f"# Study: seeds {args.seeds}, eval limit {args.limit}", ""]
    runs = [f"{setting}-seed{seed}" for seed in args.seeds for setting in args.settings]
    table = {run: data_counts(args.out / run) for run in runs}
    keys = sorted(
        {k for counts in table.values() for k in counts}, key=lambda k: (k.split(":")[0], k)
    )
    lines += ["| count | " + " | ".join(table) + " |", "|---|" + "---:|" * len(table)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(str(table[r].get(key, "")) for r in table) + " |")
    if not args.skip_eval:
        config = eval_config(args.out, args.seeds, args.settings, args.limit, eval_set)
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
