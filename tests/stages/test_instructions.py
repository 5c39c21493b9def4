"""Stage 1: filtering, provenance, resume after an interruption, and a real tiny-model run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from refine_af.generation import Completion, SamplingParams
from refine_af.run_dir import RunDirectory
from refine_af.stages import instructions
from refine_af.storage import read_log as read_batch_log
from refine_af.train_config import load_config

WORDS = [
    "apple",
    "river",
    "violet",
    "engine",
    "marble",
    "cotton",
    "falcon",
    "harbor",
    "pepper",
    "quartz",
    "saddle",
    "tundra",
]


class ScriptedLLM:
    """A fake LLM: deterministic completions derived from the prompt, for the parsing logic.

    Each completion continues the list with a few items: a fresh instruction (varies with the
    prompt), one that hits a keyword filter, one too short, and a last one cut off by the limit.
    """

    def __init__(self, fail_after_calls: int | None = None) -> None:
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt
        self.calls += 1
        if params.max_new_tokens <= 3:  # the classification question
            return [Completion(" Yes" if "sort" in p[-80:] else " No", "stop", 1) for p in prompts]
        out = []
        for prompt in prompts:
            digest = hashlib.sha256(prompt.encode()).digest()
            words = [WORDS[b % len(WORDS)] for b in digest[:6]]
            fresh = f"Describe how {' and '.join(words[:3])} relate to {words[3]} {digest[7]}."
            text = (
                f" {fresh}\n10. Draw a picture of the {words[4]} please.\n11. Sort it.\n"
                f"12. Explain the {words[5]} in"
            )
            out.append(Completion(text, "length", params.max_new_tokens))
        return out


def make_config(run: Path, seed_tasks: Path, target: int, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        "default",
        [
            f"run.output_dir={run}",
            f"generate_instructions.seed_tasks={seed_tasks}",
            f"generate_instructions.num_instructions={target}",
            "generate_instructions.prompts_per_batch=4",
            "generate_instructions.instruction_judge=null",  # Self-Instruct's filters here
            *extra,
        ],
    )


@pytest.fixture()
def tok(tokenizer_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_filters_counts_and_provenance(tmp_path: Path, seed_tasks_file: Path, tok) -> None:  # type: ignore[no-untyped-def]
    config = make_config(tmp_path / "run", seed_tasks_file, 6)
    run_dir = RunDirectory(config.run.output_dir)
    summary = instructions.run(config, run_dir, backend=ScriptedLLM(), tokenizer=tok)
    assert summary["kept"] >= 6
    # Per prompt: one keyword drop, one too short, one cut off.
    assert summary["dropped"]["unsuitable_keyword"] == summary["batches"] * 4
    assert summary["dropped"]["too_short"] == summary["batches"] * 4
    assert summary["dropped"]["cut_off"] == summary["batches"] * 4
    kept = [json.loads(line) for line in (run_dir.path / "instructions/instructions.jsonl").open()]
    assert len(kept) == summary["kept"]
    assert len({k["id"] for k in kept}) == len(kept)
    first = kept[0]
    assert first["instruction"].startswith("Describe how")
    assert len(first["provenance"]["in_context_ids"]) == 8
    assert all(i.startswith("seed_task_") for i in first["provenance"]["in_context_ids"])
    # Once machine instructions exist, prompts mix 2 of them in.
    later = [k for k in kept if k["provenance"]["batch"] >= 1]
    if later:
        assert sum(i.startswith("gen_") for i in later[0]["provenance"]["in_context_ids"]) == 2
    assert run_dir.stage_status("instructions")["state"] == "done"


def test_similar_instructions_are_dropped_against_the_pool(
    tmp_path: Path, seed_tasks_file: Path, tok
) -> None:  # type: ignore[no-untyped-def]
    class Repeating(ScriptedLLM):
        def generate(self, prompts, params):  # type: ignore[no-untyped-def]
            if params.max_new_tokens <= 3:
                return super().generate(prompts, params)
            seed_copy = "Is there anything I can eat for a breakfast that doesn't include eggs?"
            text = " Explain why the sky looks blue at noon.\n10. " + seed_copy
            return [Completion(text, "stop", 20) for _ in prompts]

    config = make_config(tmp_path / "run", seed_tasks_file, 1)
    summary = instructions.run(
        config, RunDirectory(tmp_path / "run"), backend=Repeating(), tokenizer=tok
    )
    assert summary["kept"] == 1  # the first copy only
    assert summary["dropped"]["too_similar"] == 4 * 2 - 1  # later copies and the seed copies


def test_resume_after_interrupt_matches_uninterrupted_run(
    tmp_path: Path, seed_tasks_file: Path, tok
) -> None:  # type: ignore[no-untyped-def]
    straight = make_config(tmp_path / "straight", seed_tasks_file, 12)
    instructions.run(
        straight, RunDirectory(tmp_path / "straight"), backend=ScriptedLLM(), tokenizer=tok
    )

    broken = make_config(tmp_path / "broken", seed_tasks_file, 12)
    broken_dir = RunDirectory(tmp_path / "broken")
    # Interrupt in the middle of the third batch (2 generate calls per batch).
    with pytest.raises(KeyboardInterrupt):
        instructions.run(broken, broken_dir, backend=ScriptedLLM(fail_after_calls=5), tokenizer=tok)
    assert broken_dir.stage_status("instructions")["state"] == "interrupted"
    assert len(read_batch_log(broken_dir.path / "instructions/batches.jsonl")) == 2
    # A torn final line (killed during the write) is discarded on resume.
    with (broken_dir.path / "instructions/batches.jsonl").open("a") as handle:
        handle.write('{"batch": 2, "candi')
    instructions.run(broken, broken_dir, backend=ScriptedLLM(), tokenizer=tok)

    def lines(run: Path) -> list[str]:
        return (run / "instructions/instructions.jsonl").read_text().splitlines()

    assert lines(tmp_path / "broken") == lines(tmp_path / "straight")
    batches = read_batch_log(broken_dir.path / "instructions/batches.jsonl")
    assert [b["batch"] for b in batches] == list(range(len(batches)))


def test_changed_settings_never_mix_pools(tmp_path: Path, seed_tasks_file: Path, tok) -> None:  # type: ignore[no-untyped-def]
    config = make_config(tmp_path / "run", seed_tasks_file, 2)
    instructions.run(config, RunDirectory(tmp_path / "run"), backend=ScriptedLLM(), tokenizer=tok)
    changed = make_config(tmp_path / "run", seed_tasks_file, 2, "generate_instructions.top_p=0.9")
    # Other settings: the old pool is set aside (never deleted) and a new one starts.
    summary = instructions.run(
        changed, RunDirectory(tmp_path / "run"), backend=ScriptedLLM(), tokenizer=tok
    )
    assert summary["kept"] >= 2
    assert list(tmp_path.glob("run/instructions.replaced-*/batches.jsonl"))  # nothing lost


def test_real_tiny_model_through_the_cli(
    tmp_path: Path, seed_tasks_file: Path, tiny_model_dir: Path
) -> None:
    """The whole command with a real (random, 2-layer) model: runs, records, and resumes."""
    from click.testing import CliRunner

    from refine_af.cli import cli

    run = tmp_path / "run"
    args = [
        "generate-instructions",
        "--seed-tasks",
        str(seed_tasks_file),
        "--num-instructions",
        "0",
        f"run.output_dir={run}",
        f"run.model={tiny_model_dir}",
        "generate_instructions.prompts_per_batch=4",
        "generate_instructions.max_new_tokens=24",
        "generate_instructions.max_batches=1",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (run / "config.yaml").read_text().startswith("# refineaf ")
    assert "transformers" in json.loads((run / "versions.json").read_text())
    # A random model rarely writes keepable instructions: ask for one and allow one batch, so the
    # stage runs a real batch and then stops with a clear message rather than looping forever.
    args[4] = "1"
    result = CliRunner().invoke(cli, args)
    batches = read_batch_log(run / "instructions/batches.jsonl")
    assert len(batches) == 1 and batches[0]["prompts"] == 4
    if result.exit_code != 0:
        assert "raise generate_instructions.max_batches" in result.output


def test_initial_instructions_enter_the_pool_through_the_filters(
    tmp_path: Path, seed_tasks_file: Path, tok
) -> None:  # type: ignore[no-untyped-def]
    from refine_af.errors import UserError

    pool = tmp_path / "pool.jsonl"
    texts = [
        "Summarize the story of the novel in two sentences.",
        "What is the relation between the given pairs?",  # a seed task: too similar
        "Sort it.",  # too short
        "List the prime numbers below the number in the input.",
    ]
    pool.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in texts))
    config = make_config(
        tmp_path / "run", seed_tasks_file, 4, f"generate_instructions.initial_instructions={pool}"
    )
    run_dir = RunDirectory(tmp_path / "run")
    llm = ScriptedLLM()
    summary = instructions.run(config, run_dir, backend=llm, tokenizer=tok)
    batches = read_batch_log(tmp_path / "run/instructions/batches.jsonl")
    assert batches[0]["initial"] and batches[0]["prompts"] == 0
    assert [c["reason"] for c in batches[0]["candidates"]] == [
        None,
        "too_similar",
        "too_short",
        None,
    ]
    assert summary["from_initial_instructions"] == 2 and summary["kept"] >= 4
    kept = [json.loads(line) for line in (tmp_path / "run/instructions/instructions.jsonl").open()]
    assert [k["instruction"] for k in kept[:2]] == [texts[0], texts[3]]
    assert kept[2]["provenance"]["batch"] == 1  # generation went on after the file's batch
    missing = make_config(
        tmp_path / "other",
        seed_tasks_file,
        4,
        f"generate_instructions.initial_instructions={tmp_path / 'none.jsonl'}",
    )
    with pytest.raises(UserError, match=r"initial_instructions .* does not exist"):
        instructions.run(missing, RunDirectory(tmp_path / "other"), backend=llm, tokenizer=tok)
