"""``refineaf train``: one run directory, unchanged steps skipped, changed ones re-run, data card.

Text generation goes through a scripted backend (a random 2-layer model writes nothing the
filters keep, so nothing downstream could be checked); everything else is real: the stage
bookkeeping, fingerprints, filters, and LoRA fine-tuning of the tiny Llama with TRL + PEFT.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from refine_af.cli import cli
from refine_af.generation import Completion, SamplingParams

WORDS = ["river", "engine", "violin", "glacier", "harbor", "lantern", "orchid", "quartz"]


class ScriptedBackend:
    """Stage 1 list continuations, classification answers and stage 3 instances."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        self.calls += 1
        if params.max_new_tokens <= 3:  # stage 1's classification question
            return [Completion(" No", "stop", 1) for _ in prompts]
        out = []
        for prompt in prompts:
            if prompt.endswith("Example 1\n"):  # stage 3, Self-Instruct's prompt, input-first
                task = re.findall(r"Task: (.*?)(?:<\|im_end\|>)?$", prompt, re.M)[-1]
                text = f"Input: {task[:20]}\nOutput: answer to {task[:20]}"
            elif prompt.endswith("Input:"):  # stage 3, the one-instance prompt (the default)
                task = re.findall(r"^Task: (.*?)(?:<\|im_end\|>)?$", prompt, re.M)[-1]
                # Instructions with an odd number get no input, so the card counts both kinds.
                odd = int(re.findall(r"\d+", task)[-1]) % 2
                text = f" {'None' if odd else task[:20]}\nOutput: answer to {task[:20]}"
            else:  # stage 1: a fresh instruction derived from the prompt
                digest = hashlib.sha256(prompt.encode()).digest()
                words = [WORDS[b % len(WORDS)] for b in digest[:4]]
                text = f" Explain how the {words[0]} and the {words[1]} relate {digest[5]} times."
            out.append(Completion(text, "stop", 12))
        return out


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> ScriptedBackend:
    backend = ScriptedBackend()
    monkeypatch.setattr("refine_af.generation.make_backend", lambda *a, **k: backend)
    return backend


def train(run: Path, model: Path, seeds: Path, *extra: str) -> str:
    args = [
        "train",
        "--baseline",
        f"run.output_dir={run}",
        f"run.model={model}",
        f"generate_instructions.seed_tasks={seeds}",
        "generate_instructions.num_instructions=6",
        "generate_instructions.prompts_per_batch=4",
        "generate_instructions.instruction_judge=null",  # the scripted model is no judge
        "generate_instances.output_judge=null",
        "generate_instances.decontaminate=false",
        "sft.max_steps=1",
        "sft.per_device_train_batch_size=4",
        "sft.max_length=64",
        *extra,
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_train_skips_unchanged_and_reruns_changed(
    tmp_path: Path, tiny_model_dir: Path, seed_tasks_file: Path, scripted: ScriptedBackend
) -> None:
    run = tmp_path / "run"
    output = train(run, tiny_model_dir, seed_tasks_file)
    assert f"baseline adapter: {run / 'sft/baseline/adapter'}" in output
    assert f"data card: {run / 'data_card.md'}" in output
    assert (run / "sft/baseline/adapter/adapter_model.safetensors").is_file()
    status = json.loads((run / "status.json").read_text())
    assert {status[s]["state"] for s in ("instructions", "instances:baseline", "sft:baseline")} == {
        "done"
    }
    assert "rl" not in status  # --baseline skips stage 2
    card = json.loads((run / "data_card.json").read_text())
    assert card["instructions"]["kept"] >= 6 and card["instances"]["baseline"]["kept"] >= 6
    assert card["sft"]["baseline"]["steps"] == 1 and card["seed"] == 42
    text = (run / "data_card.md").read_text()
    assert "dropped: too_similar" in text and "dropped: conflicting_outputs" in text
    assert "Time per stage" in text and "disabled" in text
    assert "that ran on after their output: 0." in text  # the scripted instances end
    kept_rows = [
        json.loads(line)
        for line in (run / "instances/baseline/instances.jsonl").read_text().splitlines()
    ]
    without_input = sum(1 for row in kept_rows if not row["input"])
    assert 0 < without_input < len(kept_rows)  # the scripted instances have both kinds
    assert card["instances"]["baseline"]["kept_without_input"] == without_input
    assert f"| kept without input | {without_input} |" in text

    calls = scripted.calls
    output = train(run, tiny_model_dir, seed_tasks_file)
    assert output.count("unchanged, skipped") == 3 and scripted.calls == calls

    # A fine-tuning setting changed: only fine-tuning runs again.
    output = train(run, tiny_model_dir, seed_tasks_file, "sft.max_steps=2")
    assert "stage 1 (instructions): unchanged, skipped" in output
    assert "stage 3 (instances, baseline): unchanged, skipped" in output
    assert "stage 3 (fine-tuning, baseline): running" in output
    assert json.loads((run / "sft/baseline/summary.json").read_text())["steps"] == 2

    # An instance setting changed: instances and, since its input changed, fine-tuning re-run.
    output = train(
        run,
        tiny_model_dir,
        seed_tasks_file,
        "sft.max_steps=2",
        "generate_instances.max_new_tokens=64",
    )
    assert "stage 1 (instructions): unchanged, skipped" in output
    assert "stage 3 (instances, baseline): running" in output
    assert "stage 3 (fine-tuning, baseline): unchanged, skipped" in output  # same instances


def test_interrupted_stage_resumes(
    tmp_path: Path, tiny_model_dir: Path, seed_tasks_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = ScriptedBackend()
    state = {"instance_calls": 0}

    class Failing:
        def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
            if prompts[0].endswith(("Example 1\n", "Input:")):  # stage 3
                state["instance_calls"] += 1
                if state["instance_calls"] == 2:
                    raise KeyboardInterrupt  # killed while writing the second batch
            return backend.generate(prompts, params)

    monkeypatch.setattr("refine_af.generation.make_backend", lambda *a, **k: Failing())
    run = tmp_path / "run"
    args = [
        "generate_instances.instructions_per_batch=2",
        "generate_instructions.instruction_judge=null",
        "generate_instances.output_judge=null",
    ]
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--baseline",
            f"run.output_dir={run}",
            f"run.model={tiny_model_dir}",
            f"generate_instructions.seed_tasks={seed_tasks_file}",
            "generate_instructions.num_instructions=6",
            "generate_instructions.prompts_per_batch=4",
            "generate_instances.decontaminate=false",
            "sft.max_steps=1",
            "sft.max_length=64",
            *args,
        ],
    )
    assert result.exit_code == 130
    status = json.loads((run / "status.json").read_text())
    assert status["instances:baseline"]["state"] == "interrupted"
    output = train(run, tiny_model_dir, seed_tasks_file, *args)
    assert "stage 1 (instructions): unchanged, skipped" in output
    log = (run / "instances/baseline/batches.jsonl").read_text().splitlines()
    assert [json.loads(line)["batch"] for line in log] == [0, 1, 2]
    assert state["instance_calls"] == 4  # 1 before the kill, the failed one, then 2 more


@pytest.mark.parametrize("layout", ["directory", "jsonl"])
def test_superni_data_without_test_tasks_stops_train_before_stage_1(
    tmp_path: Path,
    tiny_model_dir: Path,
    seed_tasks_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    layout: str,
) -> None:
    """Every stage's check runs first: SuperNI data that holds none of the test tasks is one
    line and exit 2 within seconds, not a failure at stage 3 after stages 1 and 2."""
    import time

    if layout == "directory":  # a natural-instructions checkout of training tasks only
        data = tmp_path / "tasks"
        data.mkdir()
        (data / "task001_quoref_question_generation.json").write_text("{}")
    else:
        data = tmp_path / "other.jsonl"
        data.write_text(json.dumps({"task_name": "task001_x", "id": "1", "input": "x"}) + "\n")
    monkeypatch.setenv("REFINEAF_SUPERNI_DATA", str(data))
    run = tmp_path / "run"
    started = time.monotonic()
    result = CliRunner().invoke(
        cli,
        [
            "train",
            f"run.output_dir={run}",
            f"run.model={tiny_model_dir}",
            f"generate_instructions.seed_tasks={seed_tasks_file}",
        ],
    )
    assert time.monotonic() - started < 60
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        f"error: SuperNI data {data} holds none of the 119 test tasks: point it at the test "
        "tasks (a JSONL/JSONL.GZ or a directory of natural-instructions task files)"
    ]
    assert not (run / "status.json").exists() and not (run / "instructions").exists()
