"""Peak resident memory and wall time of each stage of ``refineaf train`` and ``refineaf eval``.

Run by hand from the repository root (the environment variables of the offline setup are passed
through: ``REFINEAF_SEED_TASKS``, ``REFINEAF_SUPERNI_DATA``, ``REFINEAF_SHARED_DATA``)::

    python benchmarks/memory.py                  # the real default config (~35 min, quiet 2 cores)
    python benchmarks/memory.py --quick          # fewer batches and steps, same peaks (QUICK)
    python benchmarks/memory.py --only rl,eval   # some stages (each needs the earlier ones' files)
    python benchmarks/memory.py --env MALLOC_ARENA_MAX=2 --env OMP_NUM_THREADS=1
    python benchmarks/memory.py --only rl --set rl.gradient_accumulation_steps=4 ...
    python benchmarks/memory.py --quick --only train,eval --reference 4bd5407   # before/after

Every stage of ``refineaf train -c default`` (generate-instructions, rl, generate-instances and
sft for both variants) runs as its own ``refineaf`` process in a fresh temporary run directory,
then ``refineaf eval`` on the eval config (``--eval-config``; by default its ``vanilla`` row
only, ``--eval-rows all`` adds a row for each adapter the run just trained), then the whole
``refineaf train -c default`` once more in one process in another fresh directory. The commands
are this checkout's (``python -c 'from refine_af.cli import cli; cli()' ...`` with this
checkout first on ``PYTHONPATH``). ``--reference REV`` also checks out git revision ``REV`` into a
temporary worktree and runs every selected process with that code too, right before this
checkout's, so "before" and "after" come from one run on the same machine at nearly the same
load; the last table puts each pair side by side.

Per process it prints the peak resident set size (``ru_maxrss`` of that child, from
``os.wait4``), the wall time, the time at which the resident size first came within 2% of the
peak (sampled from ``/proc/PID/status`` every ``--interval`` seconds), the anonymous / file-backed
split of the largest sample (transformers maps safetensors weights from the file: they count as
file-backed resident pages, once per mapping) and the 1-minute load average before and after.
For the whole ``train`` process it also prints, per stage, the resident size when the stage
started (what the earlier stages left behind) and the stage's own peak.

The references measured in the same run: the fp32 size of the model's weights (from the
safetensors header, no loading), the peak of a process that only imports the libraries, and the
peak of one that loads the model and runs one forward pass. Ratios are printed against the
weight size. Peak RSS does not depend on the machine's load; wall times do,
so compare them only within one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MB = 1e6
MARKER = "[refineaf train]"  # the lines `refineaf train` prints when a stage starts

# Everything the quick mode changes, in one place. Each entry lists alternative key names (the
# first one that the packaged config has is used), so a renamed key needs one edit here. Quick
# mode keeps every batch shape of the default run (32 prompts per stage-1 batch, 32 instructions
# per instance batch, 16 completions per RL step, 8 examples per SFT step), so its peaks are the
# default run's; it runs fewer batches and steps. The eval is not shortened: its batches are
# planned over all of its prompts.
QUICK: list[tuple[tuple[str, ...], str]] = [
    (("generate_instructions.num_instructions",), "8"),
    (("rl.max_steps", "rl.num_steps"), "2"),
    (("generate_instances.max_instructions",), "32"),
    (("sft.max_steps",), "2"),
]

STAGES = [
    "generate-instructions",
    "rl",
    "generate-instances:refine_af",
    "sft:refine_af",
    "generate-instances:baseline",
    "sft:baseline",
    "eval",
    "train",
]

IMPORTS = "import torch, transformers, trl, peft, datasets, lm_eval, refine_af.cli"
LOAD_AND_FORWARD = """
import torch
from refine_af.models import load_model_and_tokenizer
model, tokenizer = load_model_and_tokenizer("default", device="cpu")
ids = tokenizer(["Hello, how are you?"] * 4, return_tensors="pt", padding=True)
with torch.inference_mode():
    model(**ids)
"""


@dataclass
class Measurement:
    name: str
    peak_bytes: int
    seconds: float
    returncode: int
    peak_reached_s: float | None
    load_before: float
    load_after: float
    log: Path
    samples: list[tuple[float, int]] = field(default_factory=list)
    # (seconds, RSS bytes, line) when the process printed a line starting with MARKER
    events: list[tuple[float, int, str]] = field(default_factory=list)
    anon_at_peak: int = 0  # split of the largest sample
    file_at_peak: int = 0


def fp32_weight_bytes(model_dir: Path) -> int:
    """Bytes the model's weights take in float32, from the safetensors headers alone."""
    total = 0
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"no *.safetensors in {model_dir}")
    for path in files:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for size in entry["shape"]:
                count *= size
            total += 4 * count
    return total


def current_rss(pid: int) -> tuple[int, int, int] | None:
    """Resident, anonymous and file-backed bytes of a process (``/proc/PID/status``)."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "RssAnon", "RssFile"):
                    fields[name] = int(value.split()[0]) * 1024
    except OSError:
        return None
    if "VmRSS" not in fields:
        return None
    return fields["VmRSS"], fields.get("RssAnon", 0), fields.get("RssFile", 0)


def run_measured(
    name: str,
    command: list[str],
    env: dict[str, str],
    log: Path,
    interval: float,
    cwd: Path = REPO,
) -> Measurement:
    """Run ``command`` to its end; its own peak RSS comes from ``os.wait4``."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        samples: list[tuple[float, int]] = []
        events: list[tuple[float, int, str]] = []
        largest = [0, 0, 0]  # the largest sample: resident, anonymous, file-backed
        done = threading.Event()

        def sample() -> None:
            pending = b""
            with log.open("rb") as reader:
                while not done.is_set():
                    sizes = current_rss(process.pid)
                    if sizes is not None:
                        rss = sizes[0]
                        now = time.perf_counter() - started
                        samples.append((now, rss))
                        if rss > largest[0]:
                            largest[:] = list(sizes)
                        *lines, pending = (pending + reader.read()).split(b"\n")
                        for raw in lines:  # progress bars rewrite a line with \r
                            line = raw.decode(errors="replace").split("\r")[-1]
                            if line.startswith(MARKER):
                                events.append((now, rss, line.strip()))
                    done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)  # already reaped
    seconds = time.perf_counter() - started
    peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    reached = next((t for t, rss in samples if rss >= 0.98 * peak), None)
    return Measurement(
        name=name,
        peak_bytes=peak,
        seconds=seconds,
        returncode=process.returncode,
        peak_reached_s=reached,
        load_before=load_before,
        load_after=os.getloadavg()[0],
        log=log,
        samples=samples,
        events=events,
        anon_at_peak=largest[1],
        file_at_peak=largest[2],
    )


@dataclass(frozen=True)
class Checkout:
    """A copy of the code to measure: its ``refineaf`` runs from ``path`` with ``path`` first on
    ``PYTHONPATH`` (not whichever refine_af is installed)."""

    label: str
    path: Path

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.path), env.get("PYTHONPATH")]))
        return env


def cli_command(*args: str) -> list[str]:
    """``refineaf`` of the checkout the process runs in (its directory is first on the path)."""
    code = "import sys; from refine_af.cli import cli; sys.exit(cli())"
    return [sys.executable, "-c", code, *args]


def packaged_config_keys(env: dict[str, str], cwd: Path = REPO) -> set[str]:
    """Dotted keys of ``refineaf show-config -c default`` (to pick the quick overrides' names)."""
    import yaml

    shown = subprocess.run(
        cli_command("show-config", "-c", "default"),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    keys: set[str] = set()

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            keys.add(prefix)

    walk("", yaml.safe_load(shown))
    return keys


def quick_overrides(env: dict[str, str], cwd: Path = REPO) -> list[str]:
    keys = packaged_config_keys(env, cwd)
    chosen = []
    for names, value in QUICK:
        found = next((n for n in names if n in keys), None)
        if found is None:
            raise SystemExit(f"none of {names} is a key of the default config: update QUICK")
        chosen.append(f"{found}={value}")
    return chosen


def eval_config(source: Path, target: Path, output_dir: Path, rows: list[dict[str, str]]) -> Path:
    """The eval config with its rows replaced and its output in the temporary directory."""
    import yaml

    config = yaml.safe_load(source.read_text())
    config["rows"] = rows
    config["output_dir"] = str(output_dir)
    if os.environ.get("REFINEAF_SUPERNI_DATA"):  # the offline data, wherever the config says
        config["data"] = os.environ["REFINEAF_SUPERNI_DATA"]
    elif config.get("data") and not Path(config["data"]).is_absolute():
        config["data"] = str((REPO / config["data"]).resolve())
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def stage_command(stage: str, run_dir: Path, overrides: list[str]) -> list[str]:
    common = ["-c", "default", f"run.output_dir={run_dir}", *overrides]
    if stage in ("generate-instructions", "rl", "train"):
        return cli_command(stage, *common)
    command, variant = stage.split(":")
    return cli_command(command, "--variant", variant, *common)


def table(measurements: list[Measurement], weights: int) -> str:
    lines = [
        "| process | peak RSS (MB) | x fp32 weights | anon / file at peak (MB) | wall (s) "
        "| peak reached at (s) | load 1-min before/after | exit |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for m in measurements:
        reached = f"{m.peak_reached_s:.0f}" if m.peak_reached_s is not None else "-"
        lines.append(
            f"| {m.name} | {m.peak_bytes / MB:,.0f} | {m.peak_bytes / weights:.2f} | "
            f"{m.anon_at_peak / MB:,.0f} / {m.file_at_peak / MB:,.0f} | {m.seconds:.1f} | "
            f"{reached} | {m.load_before:.2f} / {m.load_after:.2f} | {m.returncode} |"
        )
    return "\n".join(lines)


def stage_table(m: Measurement) -> str:
    """Per stage of one ``train`` process: RSS at its start (what earlier stages left) and peak."""
    lines = [
        "| stage | started at (s) | RSS at start (MB) | peak in stage (MB) |",
        "|---|---:|---:|---:|",
    ]
    bounds = [*m.events, (m.seconds, 0, "(end)")]
    for (start, rss, line), (end, _, _) in itertools.pairwise(bounds):
        peak = max((r for t, r in m.samples if start <= t <= end), default=rss)
        name = line.removeprefix(MARKER).strip()
        lines.append(f"| {name} | {start:.0f} | {rss / MB:,.0f} | {peak / MB:,.0f} |")
    return "\n".join(lines)


def comparison(measurements: list[Measurement], labels: tuple[str, str]) -> str:
    """Each process of the reference next to the same process of this checkout."""
    before, after = labels
    by_name = {m.name: m for m in measurements}
    lines = [
        f"| process | peak RSS {before} (MB) | peak RSS {after} (MB) | after / before "
        f"| wall {before} (s) | wall {after} (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        if not m.name.startswith(f"{before}: "):
            continue
        process = m.name.removeprefix(f"{before}: ")
        other = by_name.get(f"{after}: {process}")
        if other is None:
            continue
        lines.append(
            f"| {process} | {m.peak_bytes / MB:,.0f} | {other.peak_bytes / MB:,.0f} | "
            f"{other.peak_bytes / m.peak_bytes:.2f} | {m.seconds:.0f} | {other.seconds:.0f} |"
        )
    return "\n".join(lines)


def reference_worktree(revision: str, scratch: Path) -> Checkout:
    """Revision ``revision`` of this repository, checked out (detached) under ``scratch``."""
    target = scratch / "reference"
    try:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(target), revision],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"cannot check out {revision}: {error.stderr.strip()}") from error
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=target, capture_output=True, text=True
    ).stdout.strip()
    return Checkout(f"before ({commit})", target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (QUICK)")
    parser.add_argument("--only", default=None, help=f"comma-separated of {','.join(STAGES)}")
    parser.add_argument("--eval-config", default=str(REPO / "eval_configs" / "default.yaml"))
    parser.add_argument(
        "--eval-rows",
        choices=["vanilla", "all"],
        default="vanilla",
        help="'all' adds a row per adapter trained in this run (needs the sft stages)",
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every process")
    parser.add_argument(
        "--set", dest="train_set", action="append", default=[], help="train config override"
    )
    parser.add_argument("--eval-set", action="append", default=[], help="eval config override")
    parser.add_argument(
        "--reference",
        default=None,
        metavar="REV",
        help="also measure git revision REV (e.g. a commit before a change), process by process",
    )
    parser.add_argument("--interval", type=float, default=0.5, help="RSS sampling period (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-references", action="store_true", help="skip import/load rows")
    args = parser.parse_args()

    stages = STAGES if args.only is None else args.only.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {STAGES}")

    base_env = dict(os.environ)
    base_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    for item in args.env:
        key, _, value = item.partition("=")
        base_env[key] = value

    sys.path.insert(0, str(REPO))
    from refine_af.models import resolve_model_path

    model_dir = Path(resolve_model_path("default"))
    weights = fp32_weight_bytes(model_dir)

    scratch = Path(tempfile.mkdtemp(prefix="refineaf-memory-"))
    here = Checkout("after" if args.reference else "this checkout", REPO)
    checkouts = [reference_worktree(args.reference, scratch), here] if args.reference else [here]
    try:
        return measure_all(args, stages, checkouts, scratch, base_env, model_dir, weights)
    finally:
        if args.reference:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(checkouts[0].path)],
                cwd=REPO,
                capture_output=True,
            )
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def measure_all(
    args: argparse.Namespace,
    stages: list[str],
    checkouts: list[Checkout],
    scratch: Path,
    base_env: dict[str, str],
    model_dir: Path,
    weights: int,
) -> int:
    """Every selected process for every checkout, then the tables; 0 when all exited 0."""
    overrides = {
        c.label: (quick_overrides(c.environment(base_env), c.path) if args.quick else [])
        + args.train_set
        for c in checkouts
    }
    print(f"checkouts {', '.join(f'{c.label} {c.path}' for c in checkouts)}; scratch {scratch}")
    print(
        f"model {model_dir}; fp32 weights: {weights / MB:,.0f} MB; cores {os.cpu_count()}; "
        f"extra env {args.env or 'none'}; overrides "
        f"{overrides[checkouts[-1].label] or 'none (default config)'}"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    measurements: list[Measurement] = []

    def measure(name: str, command: list[str], checkout: Checkout) -> Measurement:
        if len(checkouts) > 1:
            name = f"{checkout.label}: {name}"
        log = scratch / f"{name.replace(':', '_').replace(' ', '_')}.log"
        env = checkout.environment(base_env)
        m = run_measured(name, command, env, log, args.interval, cwd=checkout.path)
        measurements.append(m)
        print(
            f"  {name}: peak {m.peak_bytes / MB:,.0f} MB ({m.peak_bytes / weights:.2f}x weights), "
            f"{m.seconds:.1f} s, exit {m.returncode}, load {m.load_before:.2f}->"
            f"{m.load_after:.2f}",
            flush=True,
        )
        if m.returncode != 0:
            print(log.read_text()[-3000:], file=sys.stderr)
        return m

    if not args.no_references:
        here = checkouts[-1]
        measure("reference: imports only", [sys.executable, "-c", IMPORTS], here)
        measure("reference: load model + 1 forward", [sys.executable, "-c", LOAD_AND_FORWARD], here)

    failed: set[str] = set()  # checkouts whose stage failed: their later stages need its output
    for stage in stages:
        for checkout in checkouts:
            if checkout.label in failed:
                continue
            folder = scratch / checkout.label.split()[0]
            run_dir, train_dir = folder / "run", folder / "train"
            if stage == "eval":
                source = Path(args.eval_config)
                rows: list[dict[str, str]] = [{"name": "vanilla"}]
                if args.eval_rows == "all":
                    for variant in ("baseline", "refine_af"):
                        adapter = run_dir / "sft" / variant / "adapter"
                        if adapter.is_dir():
                            rows.append({"name": variant, "adapter": str(adapter)})
                folder.mkdir(parents=True, exist_ok=True)
                target = eval_config(source, folder / "eval.yaml", folder / "eval", rows)
                names = "+".join(r["name"] for r in rows)
                command = cli_command("eval", "-c", str(target), *args.eval_set)
                measure(f"eval ({names})", command, checkout)
            elif stage == "train":
                command = stage_command("train", train_dir, overrides[checkout.label])
                measure("train (whole, one process)", command, checkout)
            else:
                command = stage_command(stage, run_dir, overrides[checkout.label])
                if measure(stage, command, checkout).returncode != 0:
                    print(f"{checkout.label}: later stages need this one's output", file=sys.stderr)
                    failed.add(checkout.label)

    for m in measurements:
        if m.events:
            print(f"\n{m.name}: RSS when each stage started, and the peak until the next one")
            print(stage_table(m))
    print()
    print(f"fp32 weights of the model: {weights / MB:,.0f} MB ({model_dir.name})")
    print(table(measurements, weights))
    if len(checkouts) > 1:
        print()
        print(comparison(measurements, (checkouts[0].label, checkouts[1].label)))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if all(m.returncode == 0 for m in measurements) else 1


if __name__ == "__main__":
    sys.exit(main())
