"""Kill test of stages 1 and 3: SIGKILL at random moments, resume, compare bytes.

A stage command is run twice, as subprocesses of the real CLI:

1. **reference**: uninterrupted, in ``REF/``;
2. **killed**: started, killed with SIGKILL after a random delay (uniform between zero and the
   reference's wall time, so kills land in start-up, model loading, generation and around a
   batch's append), started again, killed again ``--kills`` times, then run to the end, in
   ``KILLED/``.

It passes when the stage's outputs (``batches.jsonl``, ``instructions.jsonl`` or
``instances.jsonl``, ``summary.json``) are byte-identical, every batch is logged exactly once
(nothing lost, nothing generated twice) and no folder was set aside.

    python benchmarks/stage_kill_test.py --stage instances        # generate-instances, baseline
    python benchmarks/stage_kill_test.py --stage instructions     # generate-instructions
    python benchmarks/stage_kill_test.py --stage instances --model DIR --kills 4

Uses the embedded default model unless ``--model`` is given. Stage 3 reads its instructions
from the first ``--instructions`` seed tasks (``REFINEAF_SEED_TASKS`` or ``--seed-tasks``),
written as a stage-1 output, so the test does not depend on what stage 1 keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPARED = {
    "instructions": ["batches.jsonl", "instructions.jsonl", "summary.json"],
    "instances": ["batches.jsonl", "instances.jsonl", "summary.json"],
}


def command(stage: str, run: Path, model: str, seed_tasks: Path, size: int) -> list[str]:
    common = [f"run.output_dir={run}", f"run.model={model}", "run.device=cpu"]
    if stage == "instructions":
        return [
            "generate-instructions", "--seed-tasks", str(seed_tasks), *common,
            f"generate_instructions.num_instructions={size}",
            "generate_instructions.prompts_per_batch=8",
        ]  # fmt: skip
    return [
        "generate-instances", "--variant", "baseline", *common,
        "generate_instances.instructions_per_batch=4",
        "generate_instances.decontaminate=false",
    ]  # fmt: skip


def prepare(stage: str, run: Path, seed_tasks: Path, size: int) -> None:
    """Stage 3's input: the first ``size`` seed instructions, as stage 1 would write them."""
    if stage != "instances":
        return
    folder = run / "instructions"
    folder.mkdir(parents=True)
    lines = []
    with seed_tasks.open() as handle:
        for number, line in zip(range(size), handle, strict=False):
            task = json.loads(line)
            record = {
                "id": f"gen_{number:06d}",
                "instruction": task["instruction"],
                "is_classification": task.get("is_classification", False),
            }
            lines.append(json.dumps(record) + "\n")
    (folder / "instructions.jsonl").write_text("".join(lines))


def batches_logged(folder: Path) -> tuple[list[int], bool]:
    log = folder / "batches.jsonl"
    if not log.is_file():
        return [], False
    data = log.read_bytes()
    numbers = [json.loads(line)["batch"] for line in data.splitlines() if line.endswith(b"}")]
    return numbers, bool(data) and not data.endswith(b"\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=sorted(COMPARED), default="instances")
    parser.add_argument("--model", default="default")
    parser.add_argument("--seed-tasks", default=os.environ.get("REFINEAF_SEED_TASKS"))
    parser.add_argument("--instructions", type=int, default=16, help="stage-3 input / target")
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.seed_tasks:
        parser.error("give --seed-tasks or set REFINEAF_SEED_TASKS")
    seed_tasks = Path(args.seed_tasks)
    cli = [sys.executable, "-c", "from refine_af.cli import cli; cli()"]
    subfolder = "instructions" if args.stage == "instructions" else "instances/baseline"
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="stage-kill-") as work:
        reference, killed = Path(work) / "REF", Path(work) / "KILLED"
        for run in (reference, killed):
            prepare(args.stage, run, seed_tasks, args.instructions)
        started = time.time()
        subprocess.run(
            [*cli, *command(args.stage, reference, args.model, seed_tasks, args.instructions)],
            check=True,
            capture_output=True,
        )
        reference_seconds = time.time() - started
        print(f"reference run: {reference_seconds:.1f} s")
        argv = [*cli, *command(args.stage, killed, args.model, seed_tasks, args.instructions)]
        for attempt in range(1, args.kills + 1):
            before, _ = batches_logged(killed / subfolder)
            delay = rng.uniform(0, reference_seconds)
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                process.wait(timeout=delay)
                state = "finished before the kill"
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                state = f"killed at {delay:.1f} s"
            after, torn = batches_logged(killed / subfolder)
            print(
                f"attempt {attempt}: {state}; batches logged {len(before)} -> {len(after)}"
                + (" (torn last line)" if torn else "")
            )
        started = time.time()
        subprocess.run(argv, check=True, capture_output=True)
        print(f"final resume: {time.time() - started:.1f} s")

        problems = []
        for name in COMPARED[args.stage]:
            if (reference / subfolder / name).read_bytes() != (
                killed / subfolder / name
            ).read_bytes():
                problems.append(f"{name} differs")
        numbers, _ = batches_logged(killed / subfolder)
        if numbers != list(range(len(numbers))):
            problems.append(f"batches logged {numbers}")
        if list(killed.rglob("*.replaced-*")):
            problems.append("a folder was set aside")
        status = json.loads((killed / "status.json").read_text())
        entry = status[args.stage if args.stage == "instructions" else "instances:baseline"]
        states = [attempt["state"] for attempt in entry["attempts"]]
        print(f"{len(numbers)} batches, each logged once: {numbers == list(range(len(numbers)))}")
        print(f"attempts recorded in status.json: {states}; seconds counted {entry['seconds']}")
        print(
            f"compared {', '.join(COMPARED[args.stage])}: " + ("; ".join(problems) or "identical")
        )
        print("PASS" if not problems else "FAIL")
        return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
