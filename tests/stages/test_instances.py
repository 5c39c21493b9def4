"""Stage 3a: instance prompts and parsers, every instance filter, the stage, resume after a kill."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from refine_af.config import ConfigError
from refine_af.errors import UserError
from refine_af.filters import INSTANCE_DROP_REASONS, filter_task_instances, instance_drop_reason
from refine_af.generation import Completion, SamplingParams
from refine_af.prompts import (
    INSTANCE_DEMONSTRATION_TEXTS,
    instance_generation_prompt,
    parse_input_first_instances,
    parse_instances,
    parse_output_first_instances,
)
from refine_af.run_dir import RunDirectory
from refine_af.stages import instances
from refine_af.stages.instances import InstanceGenerationConfig
from refine_af.train_config import load_config

# ---------------------------------------------------------------------------------------------
# Prompts and parsers.


def test_input_first_prompt_opens_the_first_example(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = instance_generation_prompt(tokenizer, "Reverse  the word.", False, True)
    assert prompt.endswith("<|im_start|>assistant\nExample 1\n")
    assert "Task: Reverse the word." in prompt and "Class label" not in prompt
    plain = instance_generation_prompt(tokenizer, "Reverse the word.", False, False)
    assert "<|im_start|>" not in plain and plain.endswith("Task: Reverse the word.\nExample 1\n")


def test_output_first_prompt_asks_for_a_label(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = instance_generation_prompt(tokenizer, "Is the review positive?", True, True)
    assert prompt.endswith("Class label:") and "Task: Is the review positive?" in prompt


def test_parse_input_first() -> None:
    completion = (
        "Input: 3, 1, 2\nOutput: 1, 2, 3\n\nExample 2\nInput: None\nOutput: 5\n\n"
        "Example 3\nOutput: no input here\n\nExample 4\n**Input:** a\n**Output:** b\nInput: c"
    )
    assert parse_input_first_instances(completion) == [
        ("3, 1, 2", "1, 2, 3", False),
        ("", "5", False),
        ("", "no input here", False),
        ("a", "b", True),
    ]
    assert parse_instances("Output: 42", False) == [("", "42", True)]
    assert parse_input_first_instances("   \n") == []


def test_parse_output_first() -> None:
    completion = (
        " Positive\nInput: I loved it.\n\nClass label: Negative\nInput: Awful.\nOutput: Negative\n"
        "Class label: Neutral"
    )
    assert parse_output_first_instances(completion) == [
        ("I loved it.", "Positive", False),
        ("Awful.", "Negative", False),
        ("", "Neutral", True),
    ]
    assert parse_instances(" Yes\nInput: n/a", True) == [("", "Yes", True)]


# ---------------------------------------------------------------------------------------------
# Filters, one by one.


@pytest.mark.parametrize(
    ("inp", "out", "cut", "reason"),
    [
        ("a", "b", True, "cut_off"),
        ("a", "  ", False, "empty_output"),
        ("same", "same", False, "input_equals_output"),
        ("Sentence:", "b", False, "field_ends_with_colon"),
        ("a", "Here are some:", False, "field_ends_with_colon"),
        ("a", "b", False, None),
    ],
)
def test_instance_drop_reason(inp: str, out: str, cut: bool, reason: str | None) -> None:
    assert instance_drop_reason(inp, out, cut) == reason


def test_duplicates_limit_and_order() -> None:
    candidates = [
        ("a", "1", False),
        ("a", "1", False),
        ("b", "2", False),
        ("", "x", False),
        ("", "y", False),
        ("c", "3", False),
    ]
    reasons = filter_task_instances(candidates, max_instances=3)
    assert reasons == [None, "duplicate", None, None, "over_limit", "over_limit"]


def test_same_input_two_outputs_drops_the_task() -> None:
    candidates = [("a", "1", False), ("a", "2", False), ("b", "3", False), ("b", "", False)]
    reasons = filter_task_instances(candidates, max_instances=5)
    assert reasons == [
        "conflicting_outputs",
        "conflicting_outputs",
        "conflicting_outputs",
        "empty_output",
    ]
    # No input with different outputs is fine (e.g. "suggest a name").
    assert filter_task_instances([("", "1", False), ("", "2", False)], 5) == [None, None]


def test_sampled_completions_answering_one_input_keep_the_first() -> None:
    """Several sampled completions per task: two samples answering one input differently is
    no contradiction; the first answer stays, later ones go as same_input, and a conflict
    inside one completion drops only that completion's examples."""
    from refine_af.filters import task_reasons

    candidates = [
        ("a", "1", False),  # completion 0
        ("a", "2", False),  # completion 1: same input, another answer
        ("b", "3", False),  # completion 1
        ("c", "4", False),  # completion 2: "c" answered twice in one completion
        ("c", "5", False),
        ("d", "6", False),  # completion 3
    ]
    reasons = task_reasons(candidates, [None] * 6, 5, completions=[0, 1, 1, 2, 2, 3])
    assert reasons == [
        None,
        "same_input",
        None,
        "conflicting_outputs",
        "conflicting_outputs",
        None,
    ]
    # One completion per task (Self-Instruct): the conflict drops the task, as before.
    assert task_reasons(candidates, [None] * 6, 5)[0] == "conflicting_outputs"


def test_best_of_n_keeps_the_highest_scored_survivors() -> None:
    """keep_best: the limit drops the lowest-scored survivors, not the last; equal scores keep
    generation order, and a candidate dropped for another reason keeps that reason."""
    from refine_af.filters import task_reasons

    candidates = [("a", "1", False), ("b", "2", False), ("c", "3", False), ("d", "4", False)]
    reasons = [None, None, "copies_instruction", None]
    scores = [0.6, 0.9, None, 0.6]
    assert task_reasons(candidates, reasons, 2, scores=scores) == [
        None,
        None,
        "copies_instruction",
        "over_limit",
    ]
    assert task_reasons(candidates, reasons, 1, scores=scores) == [
        "over_limit",
        None,
        "copies_instruction",
        "over_limit",
    ]
    # Without scores: the first ones, as Self-Instruct keeps them.
    assert task_reasons(candidates, reasons, 2) == [None, None, "copies_instruction", "over_limit"]


def test_completions_that_run_on_after_their_output_are_counted() -> None:
    def completion(text: str) -> dict[str, str]:
        return {"text": text, "finish_reason": "stop"}

    tasks = [
        {"completions": [completion(" a\nOutput: b"), completion(" a\nOutput: b\nOutput: b")]},
        {"completions": [completion(" no marker"), completion(" x\nOutput: y\nInput: z")]},
    ]
    assert instances.completions_running_on(tasks) == 2


def test_best_of_n_needs_the_output_judge() -> None:
    with pytest.raises(ConfigError, match=r"set generate_instances\.output_judge"):
        InstanceGenerationConfig(keep_best=True, output_judge=None)
    assert InstanceGenerationConfig(keep_best=True, output_judge=0.5).keep_best


def test_contamination_and_copied_demonstrations() -> None:
    candidates = [
        ("leaked test input", "x", False),
        ("", "The Daily Grind\nmore", False),
        ("fresh", "new", False),
    ]
    reasons = filter_task_instances(
        candidates, 5, lambda i, o: "leaked" in i, demonstrations=INSTANCE_DEMONSTRATION_TEXTS
    )
    assert reasons == ["contaminated", "copied_demonstration", None]
    assert set(reasons) - {None} <= set(INSTANCE_DROP_REASONS)


# ---------------------------------------------------------------------------------------------
# The stage with a scripted backend.


class ScriptedBackend:
    """Answers from the instruction in each prompt; raises after ``fail_after`` calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # a kill in the middle of generation
        self.calls += 1
        out = []
        for prompt in prompts:
            task = re.findall(r"Task: (.*?)(?:<\|im_end\|>)?$", prompt, re.M)[-1]
            if prompt.endswith("Class label:"):
                text = f" yes\nInput: {task} one\nClass label: no\nInput: {task} two"
            else:
                text = f"Input: {task} A\nOutput: {task} B\n\nExample 2\nInput: x\nOutput: x"
            out.append(Completion(text=text, finish_reason="stop", num_tokens=10))
        return out


def make_run(tmp: Path, tiny_model_dir: Path, n: int = 7, *overrides: str) -> tuple:
    (tmp / "instructions").mkdir(parents=True)
    with (tmp / "instructions" / "instructions.jsonl").open("w") as handle:
        for i in range(n):
            record = {
                "id": f"gen_{i:06d}",
                "instruction": f"Task number {i} about topic {i}.",
                "is_classification": i % 3 == 0,
                "provenance": {},
            }
            handle.write(json.dumps(record) + "\n")
    config = load_config(
        "default",
        [
            f"run.output_dir={tmp}",
            f"run.model={tiny_model_dir}",
            # Self-Instruct's filters here (the scripted inputs repeat the instruction)
            "generate_instances.output_judge=null",
            "generate_instances.drop_non_instances=false",
            # Self-Instruct's prompt, greedy, one completion per instruction (the scripted
            # backend answers it); the default's one-instance prompt is tested on its own.
            "generate_instances.prompt_format=self_instruct",
            "generate_instances.completions_per_instruction=1",
            "generate_instances.temperature=0.0",
            "generate_instances.max_instances_per_instruction=2",
            "generate_instances.instructions_per_batch=2",
            "generate_instances.decontaminate=false",
            *overrides,
        ],
    )
    return config, RunDirectory(tmp)


def test_stage_writes_instances_and_counts(tmp_path: Path, tiny_model_dir: Path) -> None:
    config, run_dir = make_run(tmp_path, tiny_model_dir)
    summary = instances.run(config, run_dir, "baseline", backend=ScriptedBackend())
    kept = [json.loads(x) for x in (tmp_path / "instances/baseline/instances.jsonl").open()]
    # 3 classification tasks keep both labels; 4 input-first tasks lose "x -> x".
    assert summary["kept"] == len(kept) == 3 * 2 + 4
    assert summary["dropped"]["input_equals_output"] == 4
    assert kept[0]["input"] == "Task number 0 about topic 0. one"
    assert summary["instructions"]["processed"] == 7 and summary["batches"] == 4
    clf = [r for r in kept if r["is_classification"]]
    assert {r["output"] for r in clf} == {"yes", "no"}
    assert run_dir.stage_status("instances:baseline")["state"] == "done"
    with pytest.raises(Exception, match="run stage 2 first"):
        instances.run(config, run_dir, "refine_af", backend=ScriptedBackend())


def test_resume_after_kill_loses_and_duplicates_nothing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config, straight_dir = make_run(tmp_path / "straight", tiny_model_dir)
    instances.run(config, straight_dir, "baseline", backend=ScriptedBackend())
    config, run_dir = make_run(tmp_path / "killed", tiny_model_dir)
    with pytest.raises(KeyboardInterrupt):
        instances.run(config, run_dir, "baseline", backend=ScriptedBackend(fail_after=2))
    log = tmp_path / "killed/instances/baseline/batches.jsonl"
    assert len(log.read_text().splitlines()) == 2
    assert run_dir.stage_status("instances:baseline")["state"] == "interrupted"
    with log.open("a") as handle:  # a torn line from the kill
        handle.write('{"batch": 2, "instr')
    backend = ScriptedBackend()
    instances.run(config, run_dir, "baseline", backend=backend)
    assert backend.calls == 2  # only the 2 missing batches were generated
    got = (tmp_path / "killed/instances/baseline/instances.jsonl").read_text()
    assert got == (tmp_path / "straight/instances/baseline/instances.jsonl").read_text()
    batches = [json.loads(x)["batch"] for x in log.read_text().splitlines()]
    assert batches == [0, 1, 2, 3]


def test_changed_settings_set_old_instances_aside(tmp_path: Path, tiny_model_dir: Path) -> None:
    config, run_dir = make_run(tmp_path, tiny_model_dir)
    instances.run(config, run_dir, "baseline", backend=ScriptedBackend())
    changed = load_config(
        "default",
        [
            f"run.output_dir={tmp_path}",
            f"run.model={tiny_model_dir}",
            "generate_instances.instructions_per_batch=3",
            "generate_instances.decontaminate=false",
        ],
    )
    summary = instances.run(changed, run_dir, "baseline", backend=ScriptedBackend())
    assert summary["batches"] == 3
    assert list(tmp_path.glob("instances/baseline.replaced-*/batches.jsonl"))  # nothing lost


def test_decontamination_drops_instructions(
    tmp_path: Path, tiny_model_dir: Path, shared_data: Path
) -> None:
    data = shared_data / "superni_test.jsonl.gz"
    config, run_dir = make_run(
        tmp_path,
        tiny_model_dir,
        3,
        "generate_instances.decontaminate=true",
        f"generate_instances.superni_data={data}",
    )
    path = tmp_path / "instructions" / "instructions.jsonl"
    leaked = {
        "id": "gen_000099",
        "is_classification": False,
        "provenance": {},
        "instruction": "In this task, you're given an ambiguous question (which can be "
        "answered in more than one way).",
    }
    with path.open("a") as handle:
        handle.write(json.dumps(leaked) + "\n")
    summary = instances.run(config, run_dir, "baseline", backend=ScriptedBackend())
    assert summary["instructions"]["dropped_contaminated"] == 1
    assert summary["decontamination"]["applied"] is True
    assert summary["instructions"]["processed"] == 3


def test_real_tiny_model_generates(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The real transformers backend end to end (random weights: counts only, no content)."""
    config, run_dir = make_run(
        tmp_path,
        tiny_model_dir,
        3,
        "generate_instances.max_new_tokens=8",
        "generate_instances.presence_penalty=0",
    )
    summary = instances.run(config, run_dir, "baseline")
    assert summary["completions"] == 3
    assert summary["kept"] + sum(summary["dropped"].values()) == summary["candidates"]


def test_seeds_only_control_uses_the_seed_tasks_own_instances(
    tmp_path: Path, seed_tasks_file: Path, shared_data: Path
) -> None:
    from refine_af.seeds import load_seed_tasks

    config = load_config(
        "default",
        [
            f"run.output_dir={tmp_path}",
            f"generate_instructions.seed_tasks={seed_tasks_file}",
            f"generate_instances.superni_data={shared_data / 'superni_test.jsonl.gz'}",
        ],
    )
    run_dir = RunDirectory(tmp_path)
    # No stage-1 output and no model are needed: nothing is generated.
    summary = instances.run(config, run_dir, "seeds_only")
    seeds = load_seed_tasks(seed_tasks_file)
    kept = [json.loads(x) for x in (tmp_path / "instances/seeds_only/instances.jsonl").open()]
    assert summary["candidates"] == sum(len(t.instances) for t in seeds)
    assert (
        summary["kept"] == len(kept) == summary["candidates"] - summary["dropped"]["contaminated"]
    )
    assert summary["decontamination"]["applied"]
    first = seeds[0]
    assert kept[0] == {
        "id": f"{first.id}-0",
        "instruction_id": first.id,
        "instruction": first.instruction,
        "input": first.instances[0][0].strip(),
        "output": first.instances[0][1].strip(),
        "is_classification": first.is_classification,
    }
    assert instances.is_done(config, run_dir, "seeds_only")


def test_seeds_matched_draws_as_many_seed_instances_as_refine_af_kept(
    tmp_path: Path, seed_tasks_file: Path
) -> None:
    """The size-matched control: a seeded subsample of seeds_only, sized to the REFINE-AF set,
    redrawn when that set changes."""
    overrides = [
        f"run.output_dir={tmp_path}",
        f"generate_instructions.seed_tasks={seed_tasks_file}",
        "generate_instances.decontaminate=false",
    ]
    config = load_config("default", overrides)
    run_dir = RunDirectory(tmp_path)
    with pytest.raises(UserError, match="list refine_af before seeds_matched"):
        instances.run(config, run_dir, "seeds_matched")
    refine_af = tmp_path / "instances" / "refine_af"
    refine_af.mkdir(parents=True)
    (refine_af / "instances.jsonl").write_text('{"instruction": "x", "output": "y"}\n' * 40)
    summary = instances.run(config, run_dir, "seeds_matched")
    matched = [json.loads(x) for x in (tmp_path / "instances/seeds_matched/instances.jsonl").open()]
    instances.run(config, run_dir, "seeds_only")
    every = [json.loads(x) for x in (tmp_path / "instances/seeds_only/instances.jsonl").open()]
    assert summary["kept"] == len(matched) == 40
    assert summary["dropped"]["subsampled_to_refine_af_size"] == len(every) - 40
    assert all(record in every for record in matched)
    assert [every.index(r) for r in matched] == sorted(every.index(r) for r in matched)
    assert instances.is_done(config, run_dir, "seeds_matched")
    # Another seed draws another subsample; a bigger REFINE-AF set makes the old one stale.
    other = load_config("default", [*overrides, "run.seed=7"])
    assert instances.key(other, run_dir, "seeds_matched") != instances.key(
        config, run_dir, "seeds_matched"
    )
    (refine_af / "instances.jsonl").write_text('{"instruction": "x", "output": "y"}\n' * 50)
    assert not instances.is_done(config, run_dir, "seeds_matched")


def test_seeds_matched_must_follow_refine_af_in_the_pipeline() -> None:
    with pytest.raises(UserError, match="list refine_af before it"):
        load_config("default", ["pipeline.variants=[seeds_matched,refine_af]"])
