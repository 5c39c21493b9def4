"""``--restart`` means the same in every command that writes outputs (refine_af.batches).

Each command runs three times with the same settings: the second run keeps the first run's
outputs (it continues them, here finding nothing left to do); the third, with ``--restart``,
sets them aside as ``<output>.replaced-<key>`` with their key and starts again, leaving a fresh
output bound to the same key. Text generation goes through a scripted backend (a random model
writes nothing the filters keep); training, scoring and evaluation run tiny real models.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from refine_af.batches import Output
from refine_af.cli import cli
from refine_af.generation import Completion, SamplingParams

WORDS = ["river", "engine", "violin", "glacier", "harbor", "lantern", "orchid", "quartz"]
INSTRUCTIONS = ["Write a short greeting.", "Name a fruit.", "Give an antonym of the word."]


class ScriptedBackend:
    """Stage 1 list continuations, classification answers and stage 3 instances."""

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        if params.max_new_tokens <= 3:  # stage 1's classification question
            return [Completion(" No", "stop", 1) for _ in prompts]
        out = []
        for prompt in prompts:
            if prompt.endswith("Example 1\n"):  # stage 3, input-first
                task = re.findall(r"Task: (.*?)(?:<\|im_end\|>)?$", prompt, re.M)[-1]
                text = f"Input: {task[:20]}\nOutput: answer to {task[:20]}"
            elif prompt.endswith("Input:"):  # stage 3, the one-instance prompt (the default)
                task = re.findall(r"^Task: (.*?)(?:<\|im_end\|>)?$", prompt, re.M)[-1]
                text = f" {task[:20]}\nOutput: answer to {task[:20]}"
            else:  # stage 1: a fresh instruction derived from the prompt
                digest = hashlib.sha256(prompt.encode()).digest()
                words = [WORDS[b % len(WORDS)] for b in digest[:4]]
                text = f" Explain how the {words[0]} and the {words[1]} relate {digest[5]} times."
            out.append(Completion(text, "stop", 12))
        return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_instructions(run: Path) -> None:
    records = [
        {"id": f"gen_{i:06d}", "instruction": text, "is_classification": False}
        for i, text in enumerate(INSTRUCTIONS)
    ]
    write_jsonl(run / "instructions" / "instructions.jsonl", records)


def write_instances(run: Path) -> None:
    records = [
        {
            "id": f"gen_{i}-0",
            "instruction_id": f"gen_{i}",
            "instruction": f"Add one to the number {i}.",
            "input": str(i),
            "output": str(i + 1),
            "is_classification": False,
        }
        for i in range(4)
    ]
    write_jsonl(run / "instances" / "baseline" / "instances.jsonl", records)


def tiny_run(run: Path, model: Path) -> list[str]:
    return [
        f"run.output_dir={run}",
        f"run.model={model}",
        "run.device=cpu",
        f"rl.reward_model=causal:{model}",
        f"rl.evaluator={model}",
        "generate_instructions.instruction_judge=null",
        "generate_instances.output_judge=null",
        "generate_instances.decontaminate=false",
    ]


TINY_RL = [
    "rl.max_steps=1",
    "rl.per_device_train_batch_size=4",
    "rl.trainer_args.gradient_accumulation_steps=1",
    "rl.num_generations=2",
    "rl.max_completion_length=4",
    "rl.lora_r=4",
    "rl.lora_alpha=8",
]
TINY_SFT = ["sft.max_steps=1", "sft.per_device_train_batch_size=4", "sft.max_length=64"]


def case(name: str, root: Path, model: Path, shared: Path) -> tuple[list[str], Output]:
    """The command line of one command and the output ``--restart`` sets aside."""
    run = root / "run"
    common = tiny_run(run, model)
    seeds = shared / "self_instruct_seed_tasks.jsonl"
    if name == "generate-instructions":
        args = ["generate-instructions", "--seed-tasks", str(seeds), "--num-instructions", "2"]
        return [*args, *common, "generate_instructions.prompts_per_batch=2"], Output(
            run / "instructions"
        )
    if name == "generate-instances":
        write_instructions(run)
        args = ["generate-instances", "--variant", "baseline", *common]
        return args, Output(run / "instances" / "baseline")
    if name == "rl":
        write_instructions(run)
        return ["rl", *common, *TINY_RL], Output(run / "rl")
    if name == "sft":
        write_instances(run)
        return ["sft", "--variant", "baseline", *common, *TINY_SFT], Output(
            run / "sft" / "baseline"
        )
    if name == "score":
        rows = [{"instruction": t, "input": "", "output": "Yes."} for t in INSTRUCTIONS]
        source = write_jsonl(root / "rows.jsonl", rows)
        scores = root / "scores.jsonl"
        args = ["score", "--input", str(source), "--output", str(scores), *common]
        return args, Output(scores, is_folder=False)
    if name == "eval":
        out = root / "eval"
        args = [
            "eval",
            f"model={model}",
            "rows=[{name: vanilla}]",
            "compare=[]",
            "tasks=[task1393_superglue_copa_text_completion]",
            "limit=1",
            "max_gen_toks=4",
            "device=cpu",
            f"output_dir={out}",
            "bootstrap_samples=10",
            f"data={shared / 'superni_test.jsonl.gz'}",
        ]
        return args, Output(out / "vanilla")
    assert name == "train"
    args = [
        "train",
        "--baseline",
        f"generate_instructions.seed_tasks={seeds}",
        *common,
        "generate_instructions.num_instructions=2",
        "generate_instructions.prompts_per_batch=2",
        *TINY_SFT,
    ]
    return args, Output(run / "instructions")


COMMANDS = ["generate-instructions", "generate-instances", "rl", "sft", "score", "eval", "train"]


@pytest.mark.parametrize("command", COMMANDS)
def test_restart_sets_outputs_aside_and_starts_again_in_every_command(
    command: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("refine_af.generation.make_backend", lambda *a, **k: ScriptedBackend())
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))
    for name in ("REFINEAF_SUPERNI_DATA", "REFINEAF_SUPERNI_REFERENCES"):
        monkeypatch.delenv(name, raising=False)
    args, output = case(command, tmp_path, tiny_model_dir, shared_data)

    def invoke(*extra: str) -> None:
        result = CliRunner().invoke(cli, [*args, *extra])
        assert result.exit_code == 0, result.output

    def asides() -> list[Path]:
        found = output.path.parent.glob(f"{output.path.name}.replaced-*")
        return sorted(p for p in found if p.suffix != ".key")

    def fingerprint(path: Path) -> dict[str, bytes]:
        if path.is_file():
            return {"": path.read_bytes()}
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*.jsonl"))}

    invoke()
    key = output.stored_key()
    assert key and output.holds_outputs()
    invoke()  # same settings: the outputs are kept and continued
    assert asides() == [] and output.stored_key() == key
    made = fingerprint(output.path)

    invoke("--restart")
    (aside,) = asides()
    assert aside.name == f"{output.path.name}.replaced-{key}"
    kept = Output(aside, is_folder=output.is_folder)
    assert kept.stored_key() == key  # the outputs went aside with their key
    assert fingerprint(aside) == made  # untouched
    assert output.stored_key() == key and output.holds_outputs()  # made again, same key
