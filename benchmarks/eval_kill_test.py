"""Kill test of ``refineaf eval``: SIGKILL at random moments, resume, compare bytes.

One eval config is run twice, as subprocesses (``python -m refine_af.evaluation eval``):

1. **reference**: uninterrupted, into ``REF/``;
2. **killed**: started and killed with SIGKILL at a random kind of moment -- during start-up
   (up to 15 s: imports, input checks, model loading), right after a chunk was appended, or in
   the middle of the next chunk -- restarted, killed again, ``--kills`` times (fewer if a
   restart finishes first), then run to the end, into ``KILLED/``.

It passes when every run's ``samples.jsonl`` and the report (``report.md``, ``report.json``) are
byte-identical, every chunk log holds each task exactly once (nothing lost, nothing evaluated
twice), and no folder was set aside. It prints what each kill interrupted.

    python benchmarks/eval_kill_test.py                         # embedded default model
    python benchmarks/eval_kill_test.py --adapter A1 --adapter A2   # plus a row of two runs
    python benchmarks/eval_kill_test.py --model DIR --tasks 4 --limit 2 --kills 4

Needs the SuperNI data: ``REFINEAF_SUPERNI_DATA`` or ``--data`` (the offline file here is
``../shared/data/superni_test.jsonl.gz``). ``tests/evaluation/test_kill_resume.py`` (slow) runs
a small version on a tiny model.
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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


@dataclass
class KillReport:
    """What happened: per kill, the moment and the chunks finished before and after it."""

    reference_seconds: float
    kills: list[dict] = field(default_factory=list)
    final_seconds: float = 0.0
    compared: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.problems

    def lines(self) -> list[str]:
        out = [f"reference run: {self.reference_seconds:.1f} s"]
        for i, kill in enumerate(self.kills, 1):
            state = "finished before the kill" if kill["finished"] else f"killed ({kill['moment']})"
            out.append(
                f"attempt {i}: {state}; chunks logged {kill['chunks_before']} -> "
                f"{kill['chunks_after']}" + (" (torn last line)" if kill["torn"] else "")
            )
        out.append(f"final resume: {self.final_seconds:.1f} s")
        out.append(
            f"compared {len(self.compared)} files: "
            + ("all byte-identical" if not self.mismatched else f"DIFFER: {self.mismatched}")
        )
        out += [f"problem: {p}" for p in self.problems]
        out.append("PASS" if self.ok else "FAIL")
        return out


def _command(config: Path, output_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "refine_af.evaluation", "eval", "-c", str(config),
        f"output_dir={output_dir}",
    ]  # fmt: skip


def _chunk_logs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("chunks.jsonl")) if folder.is_dir() else []


def _chunk_count(folder: Path) -> tuple[int, bool]:
    """Complete chunk lines over all runs, and whether any log ends in a torn line."""
    count, torn = 0, False
    for path in _chunk_logs(folder):
        data = path.read_bytes()
        count += data.count(b"\n")
        torn = torn or (bool(data) and not data.endswith(b"\n"))
    return count, torn


def _alive_after(process: subprocess.Popen, seconds: float) -> bool:
    """Wait ``seconds``; False if the process ended by then."""
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def _wait_for_chunks(process: subprocess.Popen, folder: Path, target: int) -> bool:
    """Poll until ``target`` chunks are logged; False if the process ended first."""
    while process.poll() is None:
        if _chunk_count(folder)[0] >= target:
            return True
        time.sleep(0.05)
    return False


def _run(command: list[str], env: dict[str, str], timeout: float) -> float:
    started = time.time()
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"eval failed ({done.returncode}): {' '.join(command)}")
    return time.time() - started


def kill_test(
    config: dict,
    workdir: Path,
    kills: int = 8,
    seed: int = 0,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
) -> KillReport:
    """Run the reference, the killed-and-resumed run, and compare them (see the module doc)."""
    env = dict(env or os.environ)
    config_path = workdir / "eval.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    reference, killed = workdir / "reference", workdir / "killed"
    report = KillReport(_run(_command(config_path, reference), env, timeout))
    rng = random.Random(seed)
    total_chunks, _ = _chunk_count(reference)
    chunk_seconds = report.reference_seconds / max(total_chunks, 1)
    for _ in range(kills):
        before, _torn = _chunk_count(killed)
        # Three kinds of moment, picked at random: during start-up (imports, config and data
        # checks, model loading), right after a chunk was appended, and in the middle of the
        # next chunk. Waiting for appends rather than for a fixed time keeps the kills landing
        # however loaded the machine is.
        moment = rng.choice(["start-up", "after append", "mid-chunk"])
        process = subprocess.Popen(
            _command(config_path, killed),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # the kill reaches the process and anything it started
        )
        if moment == "start-up":
            alive = _alive_after(process, rng.uniform(0.0, 15.0))
        else:
            alive = _wait_for_chunks(process, killed, before + 1)
            if alive and moment == "mid-chunk":
                alive = _alive_after(process, rng.uniform(0.0, chunk_seconds))
        if alive:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        after, torn = _chunk_count(killed)
        report.kills.append(
            {
                "moment": moment,
                "finished": not alive,
                "chunks_before": before,
                "chunks_after": after,
                "torn": torn,
            }
        )
        if not alive:
            break  # the run finished first: nothing left to interrupt
    report.final_seconds = _run(_command(config_path, killed), env, timeout)

    for path in sorted(reference.rglob("*")):
        if path.is_file() and (path.name == "samples.jsonl" or path.name.startswith("report.")):
            relative = path.relative_to(reference)
            report.compared.append(str(relative))
            other = killed / relative
            if not other.is_file() or other.read_bytes() != path.read_bytes():
                report.mismatched.append(str(relative))
    if not report.compared:
        report.problems.append("the reference run wrote no samples")
    for log_path in _chunk_logs(killed):
        tasks = [t for line in log_path.open() for t in json.loads(line)["tasks"]]
        if len(tasks) != len(set(tasks)):
            report.problems.append(f"{log_path} evaluates a task twice")
        expected = (reference / log_path.relative_to(killed)).read_text().count("\n")
        if len(tasks) != expected:
            report.problems.append(f"{log_path}: {len(tasks)} chunks, reference {expected}")
    aside = [p.name for p in killed.rglob("*.replaced-*")]
    if aside:
        report.problems.append(f"folders were set aside: {aside}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="base model (default: embedded)")
    parser.add_argument(
        "--adapter", action="append", default=[], help="adapter dir; repeat for a row of runs"
    )
    parser.add_argument("--tasks", type=int, default=6, help="first N tasks of eval -c default")
    parser.add_argument("--limit", type=int, default=3, help="instances per task")
    parser.add_argument("--max-gen-toks", type=int, default=32)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--data", default=os.environ.get("REFINEAF_SUPERNI_DATA"))
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep the files")
    args = parser.parse_args()
    if not args.data:
        raise SystemExit("give --data or set REFINEAF_SUPERNI_DATA (SuperNI test data)")

    sys.path.insert(0, str(REPO))
    from refine_af.evaluation.config import load_eval_config

    default = load_eval_config("default")
    rows: list[dict] = [{"name": "vanilla"}]
    if args.adapter:
        rows.append({"name": "tuned", "adapter": args.adapter})
    config = {
        "model": args.model,
        "rows": rows,
        "tasks": default.task_names()[: args.tasks],
        "limit": args.limit,
        "max_gen_toks": args.max_gen_toks,
        "data": str(Path(args.data).resolve()),
        "device": "cpu",
        "bootstrap_samples": 200,
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(
            f"{len(config['tasks'])} tasks x {args.limit} instances, rows "
            f"{[r['name'] for r in rows]}, model {args.model}, {args.kills} kills (seed "
            f"{args.seed})",
            flush=True,
        )
        report = kill_test(config, workdir, kills=args.kills, seed=args.seed)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
