"""Seconds and peak resident memory of each stage of ``refineaf train``, before and after a change.

Run by hand from the repository root (the offline setup's environment variables pass through:
``REFINEAF_SEED_TASKS``, ``REFINEAF_SUPERNI_DATA``, ``REFINEAF_SHARED_DATA``)::

    python benchmarks/train_time.py                       # the default train (~30 min, 2 cores)
    python benchmarks/train_time.py --reference 679d271   # that revision first, then this code
    python benchmarks/train_time.py --set generate_instructions.num_instructions=4 \\
        --set rl.max_steps=1 --set sft.max_steps=1        # a short run, to try the script

``refineaf train -c default`` (``--config``, plus every ``--set KEY=VALUE``) runs as one process
in a fresh temporary run directory. ``--reference REV`` checks revision ``REV`` out into a
temporary git worktree and runs the same command with that code first, so "before" and "after"
come from one invocation on the same machine at nearly the same load (the helpers are
``benchmarks/memory.py``'s, which measures each stage as its own process instead).

Per stage it prints the seconds the run directory's ``status.json`` records (the stage's own
time, what the data card shows) and the largest resident size sampled from ``/proc/PID/status``
while the stage ran (between the ``[refineaf train]`` lines that start stages; every
``--interval`` seconds, so a peak shorter than that can be missed). For the whole process: the
wall time and its exact peak resident size (``ru_maxrss`` of the child, from ``os.wait4``).
The header names the machine (cores, CPU, AVX2 or AVX-512) and the load average before and
after each run: quote wall times from a quiet machine only, and compare them within one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import (  # benchmarks/ is not a package: its folder is on the path
    MARKER,
    MB,
    REPO,
    Checkout,
    Measurement,
    cli_command,
    reference_worktree,
    run_measured,
)


@dataclass
class StageTime:
    name: str  # the status.json name: instructions, rl, instances:refine_af, sft:refine_af, ...
    state: str
    seconds: float | None
    peak_bytes: int | None  # the largest RSS sample while it ran (None: not matched)


@dataclass
class TrainRun:
    label: str
    measurement: Measurement
    stages: list[StageTime]


def machine() -> str:
    """Cores, CPU model and its widest vector extension (from /proc/cpuinfo)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif name.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{os.cpu_count()} cores, {model}, {vector}"


def stage_peaks(m: Measurement) -> list[int]:
    """The largest RSS sample between each stage's start line and the next one's (or the end)."""
    starts = [(t, line) for t, _, line in m.events if line.endswith(": running")]
    bounds = [t for t, _ in starts] + [m.seconds]
    return [
        max((rss for t, rss in m.samples if start <= t <= end), default=0)
        for start, end in itertools.pairwise(bounds)
    ]


def read_stages(run_dir: Path, m: Measurement) -> list[StageTime]:
    """Per stage, in the order they ran: status.json's seconds and the sampled peak RSS."""
    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    peaks = stage_peaks(m)
    ran = list(status.items())
    matched = len(peaks) == len(ran)  # a fresh run directory: one start line per stage
    return [
        StageTime(
            name=name,
            state=str(entry.get("state")),
            seconds=entry.get("seconds"),
            peak_bytes=peaks[i] if matched else None,
        )
        for i, (name, entry) in enumerate(ran)
    ]


def measure(
    checkout: Checkout,
    folder: Path,
    config: str,
    overrides: list[str],
    env: dict[str, str],
    interval: float,
) -> TrainRun:
    run_dir = folder / "run"
    folder.mkdir(parents=True, exist_ok=True)
    command = cli_command("train", "-c", config, f"run.output_dir={run_dir}", *overrides)
    log = folder / "train.log"
    print(f"{checkout.label}: {' '.join(command[3:])}", flush=True)
    m = run_measured(
        checkout.label, command, checkout.environment(env), log, interval, cwd=checkout.path
    )
    print(
        f"  {m.seconds:.1f} s, peak {m.peak_bytes / MB:,.0f} MB, exit {m.returncode}, "
        f"load {m.load_before:.2f} -> {m.load_after:.2f}",
        flush=True,
    )
    if m.returncode != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
    return TrainRun(checkout.label, m, read_stages(run_dir, m))


def _seconds(stage: StageTime | None) -> str:
    if stage is None or stage.seconds is None:
        return "-"
    return f"{stage.seconds:,.1f}" + ("" if stage.state == "done" else f" ({stage.state})")


def _peak(stage: StageTime | None) -> str:
    if stage is None or stage.peak_bytes is None:
        return "-"
    return f"{stage.peak_bytes / MB:,.0f}"


def report(runs: list[TrainRun]) -> str:
    """One table: a seconds and a peak-RSS column per run, a row per stage, then the totals."""
    names: list[str] = []
    for run in runs:
        names += [s.name for s in run.stages if s.name not in names]
    pair = len(runs) == 2

    def ratio(a: float | None, b: float | None) -> str:
        return f"{b / a:.2f}" if a and b is not None else "-"

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    header = ["stage"]
    for r in runs:
        header += [f"{r.label}: s", f"{r.label}: peak RSS (MB)"]
    lines = [line(header + (["after / before (s)"] if pair else []))]
    lines.append(line(["---"] + ["---:"] * (len(header) - 1 + pair)))
    for name in names:
        found = [next((s for s in r.stages if s.name == name), None) for r in runs]
        cells = [name]
        for stage in found:
            cells += [_seconds(stage), _peak(stage)]
        if pair:
            a, b = (s.seconds if s else None for s in found)
            cells.append(ratio(a, b))
        lines.append(line(cells))
    summed = [sum(s.seconds or 0.0 for s in r.stages) for r in runs]
    cells = ["sum of stages"]
    for total in summed:
        cells += [f"{total:,.1f}", ""]
    lines.append(line(cells + ([ratio(*summed)] if pair else [])))
    cells = ["**whole process** (wall; exact peak)"]
    for r in runs:
        cells += [f"{r.measurement.seconds:,.1f}", f"{r.measurement.peak_bytes / MB:,.0f}"]
    walls = [r.measurement.seconds for r in runs]
    lines.append(line(cells + ([ratio(*walls)] if pair else [])))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="default", help="train config name or path")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE"
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="REV",
        help="also run git revision REV (e.g. the commit before a change), first",
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the runs")
    parser.add_argument("--interval", type=float, default=0.5, help="RSS sampling period (s)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args()

    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value

    scratch = Path(tempfile.mkdtemp(prefix="refineaf-train-time-"))
    here = Checkout("after" if args.reference else "this checkout", REPO)
    checkouts = [reference_worktree(args.reference, scratch), here] if args.reference else [here]
    print(f"machine: {machine()}")
    print(f"config: -c {args.config} {' '.join(args.overrides) or '(no overrides)'}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    try:
        runs = [
            measure(c, scratch / f"run{i}", args.config, args.overrides, env, args.interval)
            for i, c in enumerate(checkouts)
        ]
    finally:
        if args.reference:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(checkouts[0].path)],
                cwd=REPO,
                capture_output=True,
            )
        if args.keep:
            print(f"kept {scratch} (run directories and train.log per run)")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(report(runs))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"(stage peaks: largest {MARKER!r}-delimited sample; whole process: exact ru_maxrss)")
    return 0 if all(r.measurement.returncode == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
