"""``refineaf export``: a real run directory (the stages on the tiny Llama: instructions, RL and the
instances of all three variants) written as a Hugging Face dataset and read back with
``datasets.load_dataset``.

Stages 1 and 3 write their text through a scripted backend (a random 2-layer model writes nothing
the filters keep); stage 2 samples the tiny model itself and scores it with the tiny model as
reward model and evaluator, so ``rl/samples.jsonl`` is the stage's own.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from refine_af import export
from refine_af.cli import cli
from refine_af.config import to_dict
from refine_af.generation import Completion, SamplingParams
from refine_af.run_dir import RunDirectory
from refine_af.stages import instances, instructions, rl
from refine_af.storage import read_records
from refine_af.train_config import load_config

WORDS = ["river", "engine", "violin", "glacier", "harbor", "lantern", "orchid", "quartz"]


class ScriptedBackend:
    """Stage 1 list continuations and classification answers; stage 3 instances, one of them a
    duplicate and one with an empty output, so the filters drop some."""

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        if params.max_new_tokens <= 3:  # stage 1's classification question
            return [Completion(" No", "stop", 1) for _ in prompts]
        out = []
        for prompt in prompts:
            if prompt.endswith("Example 1\n"):  # stage 3, input-first
                task = re.findall(r"Task: (.*?)(?:<\|im_end\|>)?$", prompt, re.M)[-1][:20]
                example = f"Input: {task}\nOutput: answer to {task}"
                text = f"{example}\n\nExample 2\n{example}\n\nExample 3\nInput: other\nOutput:"
            else:  # stage 1: a fresh instruction derived from the prompt
                digest = hashlib.sha256(prompt.encode()).digest()
                words = [WORDS[b % len(WORDS)] for b in digest[:4]]
                text = f" Explain how the {words[0]} and the {words[1]} relate {digest[5]} times."
            out.append(Completion(text, "stop", 12))
        return out


def load(out: Path, *args: str, **kwargs: str):  # type: ignore[no-untyped-def]
    """``datasets.load_dataset`` with a cache of its own: the shared cache keys a local folder
    by its path and files, so an earlier export at the same temporary path could be read back."""
    from datasets import load_dataset

    return load_dataset(str(out), *args, cache_dir=str(out.parent / "hf-cache"), **kwargs)


def overrides(run: Path, model: Path, seeds: Path) -> list[str]:
    return [
        f"run.output_dir={run}",
        f"run.model={model}",
        "run.device=cpu",
        f"generate_instructions.seed_tasks={seeds}",
        "generate_instructions.num_instructions=4",
        "generate_instructions.prompts_per_batch=4",
        "generate_instructions.instruction_judge=null",
        "generate_instances.output_judge=null",
        "generate_instances.decontaminate=false",
        # Self-Instruct's prompt, greedy, one completion (what the scripted backend answers).
        "generate_instances.prompt_format=self_instruct",
        "generate_instances.completions_per_instruction=1",
        "generate_instances.temperature=0.0",
        f"rl.reward_model=causal:{model}",
        f"rl.evaluator={model}",
        "rl.max_steps=1",
        "rl.per_device_train_batch_size=4",
        "rl.trainer_args.gradient_accumulation_steps=1",
        "rl.num_generations=2",
        "rl.max_completion_length=8",
        "rl.lora_r=4",
        "rl.lora_alpha=8",
    ]


@pytest.fixture(scope="module")
def run_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, seed_tasks_file: Path
) -> Path:
    """A run directory as ``refineaf train`` leaves it, up to the data: instructions, RL and the
    instances of all three variants, each made by its stage's own ``run`` (fine-tuning, which
    adds no data, is left out to keep the test fast)."""
    run = tmp_path_factory.mktemp("export") / "run"
    words = overrides(run, tiny_model_dir, seed_tasks_file)
    config = load_config("default", words)
    command = shlex.join(["refineaf", "train", "-c", "default", *words])
    directory = RunDirectory(run, to_dict(config), command)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("refine_af.generation.make_backend", lambda *a, **k: ScriptedBackend())
        instructions.run(config, directory)
        rl.run(config, directory)
        for variant in instances.VARIANTS:
            instances.run(config, directory, variant)
    return run


@pytest.fixture(scope="module")
def exported(run_dir: Path) -> tuple[Path, str]:
    out = run_dir.parent / "dataset"
    result = CliRunner().invoke(cli, ["export", str(run_dir), str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def status_summary(run: Path, stage: str) -> dict:
    return json.loads((run / "status.json").read_text())[stage]["summary"]


def test_every_config_and_split_loads_with_the_run_rows(
    run_dir: Path, exported: tuple[Path, str]
) -> None:
    out, output = exported
    # The default config is the instances, one split per variant.
    default = load(out)
    assert set(default) == set(instances.VARIANTS)
    for variant in instances.VARIANTS:
        kept = read_records(run_dir / instances.STAGE_DIR / variant / "instances.jsonl")
        split = load(out, "instances", split=variant)
        assert split.to_list() == kept and len(kept) > 0, variant
        assert f"{variant} {len(kept)}" in output

    stage1 = load(out, "instructions", split="train")
    summary = status_summary(run_dir, instructions.STAGE)
    assert len(stage1) == summary["candidates"] and sum(stage1["kept"]) == summary["kept"]
    kept = [row for row in stage1 if row["kept"]]
    pool = read_records(run_dir / instructions.STAGE / "instructions.jsonl")
    assert [(r["id"], r["instruction"]) for r in kept] == [
        (r["id"], r["instruction"]) for r in pool
    ]
    dropped = [row["filter_reason"] for row in stage1 if not row["kept"]]
    for reason, count in summary["dropped"].items():
        assert dropped.count(reason) == count, reason

    candidates = load(out, "instance_candidates")
    assert set(candidates) == {"refine_af", "baseline"}  # the seed variants generate nothing
    for variant in ("refine_af", "baseline"):
        summary = status_summary(run_dir, instances.stage_name(variant))
        rows = candidates[variant]
        assert len(rows) == summary["candidates"] and sum(rows["kept"]) == summary["kept"]
        reasons = rows["filter_reason"]
        assert reasons.count("duplicate") == summary["dropped"]["duplicate"] > 0
        assert reasons.count("empty_output") == summary["dropped"]["empty_output"] > 0

    samples = load(out, "rl_samples", split="train")
    logged = read_records(run_dir / rl.STAGE / "samples.jsonl")
    assert len(samples) == len(logged) > 0
    assert samples["combined"] == [row["combined"] for row in logged]
    weighted = load_config("default", []).rl.reward_weights
    assert {"step", "instruction", "completion", "format", *weighted} <= set(samples.column_names)
    assert (out / export.RUN_CONFIG).read_text() == (run_dir / "config.yaml").read_text()


def test_card_has_metadata_and_names_every_count(run_dir: Path, exported: tuple[Path, str]) -> None:
    out, _ = exported
    text = (out / "README.md").read_text()
    header, body = text.split("\n---\n", 1)
    metadata = yaml.safe_load(header.removeprefix("---\n"))
    assert metadata["license"] == "apache-2.0" and metadata["language"] == ["en"]
    assert metadata["task_categories"] == ["text-generation"]
    assert metadata["size_categories"] == ["n<1K"]
    files = {
        c["config_name"]: {f["split"]: f["path"] for f in c["data_files"]}
        for c in metadata["configs"]
    }
    assert files["instances"] == {v: f"instances/{v}.parquet" for v in instances.VARIANTS}
    assert set(files) == {"instructions", "instances", "instance_candidates", "rl_samples"}
    for paths in files.values():
        assert all((out / path).is_file() for path in paths.values())

    stages = [instructions.STAGE, rl.STAGE]
    stages += [instances.stage_name(v) for v in instances.VARIANTS]
    for stage in stages:
        summary = status_summary(run_dir, stage)
        counts = export.count_rows(summary)
        for name, value in counts:
            assert f"| {name} | {value} |" in body, (stage, name)
        # Independently of count_rows: the totals and every filter's count are there.
        named = {name for name, _ in counts}
        if stage != rl.STAGE:
            assert {"candidates", "kept"} <= named, stage
            assert {f"dropped.{reason}" for reason in summary["dropped"]} <= named, stage
    assert "| dropped.too_similar | " in body and "| dropped.duplicate | 4 |" in body

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for name, weight in config["rl"]["reward_weights"].items():
        assert f"| {name} | {weight} |" in body
    assert f"| intercept | {config['rl']['reward_intercept']} |" in body
    command = (run_dir / "config.yaml").read_text().splitlines()[0].removeprefix("# ")
    assert command.startswith("refineaf train") and command in body
    assert f"refineaf export {run_dir} {out}" in body
    assert "Apache-2.0" in body and "is that file unchanged" in body
    assert str(run_dir / "rl" / "adapter") in body  # the adapter behind refine_af's instances
    assert "Not in this export" not in body


def test_a_baseline_run_says_what_it_lacks(run_dir: Path, tmp_path: Path) -> None:
    """A run without RL (``refineaf train --baseline``): only what it has is exported, and the
    card says what is missing."""
    baseline = instances.stage_name("baseline")
    partial = tmp_path / "run"
    for name in (instructions.STAGE, f"{instances.STAGE_DIR}/baseline"):
        shutil.copytree(run_dir / name, partial / name)
    shutil.copy(run_dir / "config.yaml", partial / "config.yaml")
    status = json.loads((run_dir / "status.json").read_text())
    kept = {stage: status[stage] for stage in (instructions.STAGE, baseline)}
    (partial / "status.json").write_text(json.dumps(kept))

    out = tmp_path / "dataset"
    result = CliRunner().invoke(cli, ["export", str(partial), str(out)])
    assert result.exit_code == 0, result.output
    assert set(load(out)) == {"baseline"}
    assert len(load(out, "instructions", split="train")) > 0
    body = (out / "README.md").read_text()
    assert "rl_samples" not in body and "No RL in this run" in body
    assert "- RL samples (stage 2): not run in this run directory" in body
    assert "- instances (refine_af): not run in this run directory" in body


def one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_run_directory_is_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "out")
    missing = one_error_line(runner.invoke(cli, ["export", str(tmp_path / "nope"), out]))
    assert "is not a directory" in missing
    (tmp_path / "empty").mkdir()
    line = one_error_line(runner.invoke(cli, ["export", str(tmp_path / "empty"), out]))
    assert "not a refineaf run directory" in line
    (tmp_path / "empty" / "status.json").write_text("{}")
    line = one_error_line(runner.invoke(cli, ["export", str(tmp_path / "empty"), out]))
    assert "no finished stage to export" in line
    (tmp_path / "empty" / "status.json").write_text("{not json")
    line = one_error_line(runner.invoke(cli, ["export", str(tmp_path / "empty"), out]))
    assert "status.json is not valid JSON" in line
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite_and_must_be_an_export(
    run_dir: Path, exported: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = exported
    runner = CliRunner()
    line = one_error_line(runner.invoke(cli, ["export", str(run_dir), str(out)]))
    assert "exists and is not empty: pass --overwrite" in line
    result = runner.invoke(cli, ["export", str(run_dir), str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "--overwrite" in (out / "README.md").read_text()

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    line = one_error_line(runner.invoke(cli, ["export", str(run_dir), str(other), "--overwrite"]))
    assert "is not an earlier export (todo.txt)" in line
    assert (other / "todo.txt").read_text() == "keep me"
    line = one_error_line(runner.invoke(cli, ["export", str(run_dir), str(run_dir.parent)]))
    assert "holds the run directory" in line


def test_push_to_an_unreachable_hub_is_one_line(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    out = tmp_path / "dataset"
    args = ["export", str(run_dir), str(out), "--push-to-hub", "someone/data", "--private"]
    line = one_error_line(CliRunner().invoke(cli, args))
    assert "cannot push to the Hub dataset someone/data" in line
    assert f"the dataset is saved in {out}" in line
    assert (out / "README.md").is_file()  # the local export stays
    line = one_error_line(CliRunner().invoke(cli, ["export", str(run_dir), "x", "--private"]))
    assert "--private applies to --push-to-hub" in line
