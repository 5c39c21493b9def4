"""``refineaf train`` SIGKILLed during fine-tuning and during RL, then run again.

The killed run is a real ``refineaf train`` process killed with SIGKILL (no handler runs) right
after its first complete checkpoint; the same command is then run again in this process. It must
continue from the checkpoint the kill left (the summary's ``resumed_from`` names it, nothing is
set aside) and end with the adapter an uninterrupted run makes, within float tolerance.

Tiny real models (tests/conftest.py) keep each test within seconds of training; most of the time
is the killed process importing torch and TRL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from refine_af.cli import cli
from refine_af.instance_format import ParsedInstance

REPO = Path(__file__).resolve().parents[1]

# The RL run's instructions: stage 1 takes them from a file (a random model writes none that
# the filters keep), through the same filters.
INSTRUCTIONS = [
    "Write a short greeting for a new colleague.",
    "Name a fruit that grows on trees in cold climates.",
    "Give an antonym of the word in the input.",
    "Convert the temperature from degrees Celsius to Kelvin.",
]
# A random 2-layer model never writes "Input: ... Output: ...": in stage 2's rewards and stage
# 3's reader any non-empty completion counts as one instance's output (so rewards differ between
# completions and advantages are non-zero, and fine-tuning gets instances). The killed process
# runs this first; this process patches the same two functions with monkeypatch.
PATCH_PARSERS = """
from refine_af import rewards
from refine_af.stages import instances
from tests.test_train_resume import lenient_parse, lenient_reader
rewards.parse_instance = lenient_parse
instances._prompt_and_parser = lenient_reader(instances._prompt_and_parser)
"""


def lenient_parse(text: str) -> ParsedInstance | None:
    return ParsedInstance("", text.strip()) if text.strip() else None


def lenient_reader(original):  # type: ignore[no-untyped-def]
    """Stage 3's prompt as configured; every non-empty completion is one whole instance."""

    def prompt_and_parser(tokenizer, config):  # type: ignore[no-untyped-def]
        ask, _ = original(tokenizer, config)
        return ask, lambda task, text: [("", text.strip(), False)] if text.strip() else []

    return prompt_and_parser


def train_args(run: Path, model: Path, seeds: Path, *extra: str) -> list[str]:
    return [
        "train",
        f"run.output_dir={run}",
        f"run.model={model}",
        "run.device=cpu",
        f"generate_instructions.seed_tasks={seeds}",
        "generate_instances.decontaminate=false",
        "sft.per_device_train_batch_size=2",
        "sft.trainer_args.gradient_accumulation_steps=1",
        "sft.max_length=64",
        "sft.learning_rate=0.01",
        "sft.logging_steps=1",
        *extra,
    ]


def run_in_process(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result.output


def kill_after_checkpoint(args: list[str], checkpoints: Path, patch: str = "") -> Path:
    """Start ``refineaf ARGS`` as its own process, SIGKILL it once a complete checkpoint is in
    ``checkpoints``; return the newest complete checkpoint it left."""
    code = f"{patch}\nimport sys\nfrom refine_af.cli import cli\nsys.exit(cli())"
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 300
    try:
        while not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
            if process.poll() is not None:
                pytest.fail(f"train ended before a checkpoint: {process.stderr.read().decode()}")
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "the run finished before the kill landed"
    complete = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]))


def assert_same_adapter(got: Path, want: Path, atol: float = 1e-6) -> None:
    import torch
    from safetensors.torch import load_file

    a = load_file(got / "adapter_model.safetensors")
    b = load_file(want / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], atol=atol, rtol=0, msg=name)
    assert any("lora_B" in n and float(v.abs().max()) > 0 for n, v in a.items())  # it trained


def test_train_killed_during_fine_tuning_resumes_from_its_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, seed_tasks_file: Path
) -> None:
    extra = ("pipeline.variants=[seeds_only]", "sft.max_steps=8", "sft.save_steps=2")
    straight = tmp_path / "straight"
    run_in_process(train_args(straight, tiny_model_dir, seed_tasks_file, *extra))

    killed = tmp_path / "killed"
    args = train_args(killed, tiny_model_dir, seed_tasks_file, *extra)
    folder = killed / "sft" / "seeds_only"
    checkpoint = kill_after_checkpoint(args, folder / "checkpoints")
    assert not (folder / "adapter").exists()

    output = run_in_process(args)
    assert "stage 3 (instances, seeds_only): unchanged, skipped" in output
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["resumed_from"] == checkpoint.name and summary["steps"] == 8
    assert not list(killed.glob("sft/seeds_only.replaced-*"))  # nothing set aside
    assert_same_adapter(folder / "adapter", straight / "sft" / "seeds_only" / "adapter")
    # The data card reports the resumed fine-tuning like an uninterrupted one.
    card = json.loads((killed / "data_card.json").read_text())
    assert card["sft"]["seeds_only"]["steps"] == 8


@pytest.mark.slow  # stage 1, 4 RL steps and stage 3 twice, plus a killed process: about 1 min
def test_train_killed_during_rl_resumes_from_its_checkpoint(
    tmp_path: Path,
    tiny_model_dir: Path,
    seed_tasks_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from refine_af import rewards
    from refine_af.stages import instances

    monkeypatch.setattr(rewards, "parse_instance", lenient_parse)
    reader = lenient_reader(instances._prompt_and_parser)
    monkeypatch.setattr(instances, "_prompt_and_parser", reader)
    initial = tmp_path / "instructions.jsonl"
    initial.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in INSTRUCTIONS))
    extra = (
        "pipeline.variants=[refine_af]",
        f"generate_instructions.initial_instructions={initial}",
        "generate_instructions.num_instructions=3",  # of the 4: one may be a seed's near-copy
        "generate_instructions.instruction_judge=null",
        f"rl.reward_model=causal:{tiny_model_dir}",
        f"rl.evaluator={tiny_model_dir}",
        "rl.max_steps=4",
        "rl.save_steps=1",
        "rl.per_device_train_batch_size=4",
        "rl.trainer_args.gradient_accumulation_steps=1",
        "rl.num_generations=2",
        "rl.max_completion_length=8",
        # The random model never ends a completion within 8 tokens: scored as unparsed (the
        # default's cut_off_fails_format), every completion would get -1 and no advantage, and
        # masked, no token would carry loss; either way the adapter would not move.
        "rl.cut_off_fails_format=false",
        "rl.mask_truncated_completions=false",
        "rl.learning_rate=0.01",
        "rl.lora_r=4",
        "rl.lora_alpha=8",
        "generate_instances.max_new_tokens=8",
        "generate_instances.temperature=1.0",  # greedy, the random model writes "::::::::"
        "generate_instances.output_judge=null",
        "sft.max_steps=1",
    )
    straight = tmp_path / "straight"
    run_in_process(train_args(straight, tiny_model_dir, seed_tasks_file, *extra))

    killed = tmp_path / "killed"
    args = train_args(killed, tiny_model_dir, seed_tasks_file, *extra)
    checkpoint = kill_after_checkpoint(args, killed / "rl" / "checkpoints", PATCH_PARSERS)
    assert not (killed / "rl" / "adapter").exists()

    output = run_in_process(args)
    assert "stage 1 (instructions): unchanged, skipped" in output
    summary = json.loads((killed / "rl" / "summary.json").read_text())
    assert summary["resumed_from"] == checkpoint.name and summary["steps"] == 4
    assert not list(killed.glob("rl.replaced-*"))
    assert_same_adapter(killed / "rl" / "adapter", straight / "rl" / "adapter")
    # Every step is logged once, the killed attempt's steps after the checkpoint included.
    steps = [json.loads(line)["step"] for line in (killed / "rl/metrics.jsonl").open()]
    assert steps == list(range(1, 5))
