"""Broken files handed to a command: one line naming the file and the fix, exit 2, no traceback.

Each broken artifact is made from a real one (the tiny model of tests/conftest.py and a LoRA
adapter trained on nothing but saved by PEFT) the way a user or a kill breaks it: a pickle that
torch's weights-only loader refuses, a file cut in half, a missing or damaged JSON file, an
adapter for another base model.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from refine_af.artifacts import check_adapter, check_model_dir
from refine_af.cli import cli
from refine_af.errors import UserError

TASK = "task1345_glue_qqp_question_paraprashing"


def save_adapter(base: Path, folder: Path, **save: object) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    torch.manual_seed(1)
    peft_model.save_pretrained(folder, **save)
    return folder


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="module")
def other_base_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter of a wider model (hidden size 48, not 32) with the same tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("wider-llama")
    LlamaForCausalLM(config).save_pretrained(base)
    return save_adapter(base, tmp_path_factory.mktemp("wider-adapter"))


def copy_of(folder: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def non_tensor_pickle(folder: Path) -> None:
    """adapter_model.bin holding an object besides tensors: weights-only loading refuses it."""
    import torch
    from safetensors.torch import load_file

    state = load_file(folder / "adapter_model.safetensors")
    (folder / "adapter_model.safetensors").unlink()
    torch.save({**state, "settings": argparse.Namespace(r=4)}, folder / "adapter_model.bin")


# (how the adapter is broken, the file the line must name, what the line says)
BROKEN_ADAPTERS: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("pickle", non_tensor_pickle, "adapter_model.bin", "it holds objects other than tensors"),
    (
        "truncated",
        lambda f: cut_in_half(f / "adapter_model.safetensors"),
        "adapter_model.safetensors",
        "is damaged or cut short",
    ),
    (
        "no_config",
        lambda f: (f / "adapter_config.json").unlink(),
        "",
        "has no adapter_config.json",
    ),
    (
        "bad_config",
        lambda f: cut_in_half(f / "adapter_config.json"),
        "adapter_config.json",
        "is not valid JSON",
    ),
]


def break_adapter(
    how: str, adapter: Path, other_base_adapter: Path, tmp_path: Path
) -> tuple[Path, str, str]:
    """A broken copy of an adapter, the file its line must name, and what the line says."""
    if how == "other_base":
        return other_base_adapter, "", "does not fit the base model"
    for name, damage, file, says in BROKEN_ADAPTERS:
        if name == how:
            folder = copy_of(adapter, tmp_path, f"adapter-{name}")
            damage(folder)
            return folder, file, says
    raise AssertionError(how)


ADAPTER_CASES = [name for name, *_ in BROKEN_ADAPTERS] + ["other_base"]


def one_error_line(output: str) -> str:
    """The only error line of a failed command (progress bars aside); no traceback."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def test_a_whole_adapter_passes(adapter: Path, tiny_model_dir: Path) -> None:
    check_adapter(adapter, tiny_model_dir, "fix")
    check_model_dir(tiny_model_dir)


@pytest.mark.parametrize("how", ADAPTER_CASES)
def test_each_broken_adapter_is_one_line_naming_its_file(
    how: str, adapter: Path, other_base_adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder, file, says = break_adapter(how, adapter, other_base_adapter, tmp_path)
    with pytest.raises(UserError) as caught:
        check_adapter(folder, tiny_model_dir, "train it again")
    message = str(caught.value)
    assert "\n" not in message and says in message
    assert str(folder / file).rstrip("/") in message and message.endswith("train it again")
    if how == "other_base":
        assert "in the adapter and 32 in the base model" in message


@pytest.mark.parametrize("how", ADAPTER_CASES)
def test_eval_stops_on_a_broken_adapter_before_any_row_starts(
    how: str,
    adapter: Path,
    other_base_adapter: Path,
    tiny_model_dir: Path,
    shared_data: Path,
    tmp_path: Path,
) -> None:
    data = shared_data / "superni_test.jsonl.gz"
    if not data.is_file():
        pytest.skip(f"SuperNI test data not found in {shared_data}")
    folder, file, says = break_adapter(how, adapter, other_base_adapter, tmp_path)
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            f"model={tiny_model_dir}",
            f"data={data}",
            f"tasks=[{TASK}]",
            "limit=1",
            f"rows=[{{name: vanilla}}, {{name: tuned, adapter: {folder}}}]",
            f"output_dir={out}",
        ],
    )
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith("error: row 'tuned': ") and says in line
    assert str(folder / file).rstrip("/") in line
    assert "remove the row from the eval config" in line
    assert not out.exists()  # not even the vanilla row above it started


def model_copy(tiny_model_dir: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    folder = copy_of(tiny_model_dir, tmp_path, "model")
    damage(folder)
    return folder


@pytest.mark.parametrize(
    ("file", "damage", "says"),
    [
        ("model.safetensors", cut_in_half, "is damaged or cut short"),
        ("config.json", cut_in_half, "is not valid JSON"),
        ("tokenizer.json", cut_in_half, "is not valid JSON"),
        ("generation_config.json", lambda p: p.write_text("[]"), "holds a JSON list"),
    ],
)
def test_a_broken_model_folder_is_one_line_naming_its_file(
    file: str,
    damage: Callable[[Path], None],
    says: str,
    tiny_model_dir: Path,
    seed_tasks_file: Path,
    tmp_path: Path,
) -> None:
    model = model_copy(tiny_model_dir, tmp_path, lambda folder: damage(folder / file))
    result = CliRunner().invoke(
        cli,
        [
            "generate-instructions",
            "--seed-tasks",
            str(seed_tasks_file),
            "--num-instructions",
            "1",
            f"run.model={model}",
            f"run.output_dir={tmp_path / 'run'}",
        ],
    )
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {model / file} {says}"), line
    assert "again" in line  # the fix: download or save it again


def test_a_damaged_rl_adapter_stops_stage_3_with_one_line(
    adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    (run / "instructions").mkdir(parents=True)
    (run / "instructions" / "instructions.jsonl").write_text(
        json.dumps({"id": "gen_0", "instruction": "Name a colour."}) + "\n"
    )
    rl_adapter = run / "rl" / "adapter"
    shutil.copytree(adapter, rl_adapter)
    cut_in_half(rl_adapter / "adapter_model.safetensors")  # a copy killed half-way
    result = CliRunner().invoke(
        cli,
        [
            "generate-instances",
            "--variant",
            "refine_af",
            f"run.model={tiny_model_dir}",
            f"run.output_dir={run}",
            "generate_instances.decontaminate=false",
        ],
    )
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert line.startswith(f"error: {rl_adapter / 'adapter_model.safetensors'} is damaged")
    assert line.endswith(f"refineaf rl -c CONFIG run.output_dir={run} --restart)")
    assert not (run / "instances").exists()


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("torn.jsonl", b'{"instruction": "a", "output": "b", "label": "good"}\n{"instr', "line 2"),
        ("binary.jsonl", bytes(range(256)), "line 1"),
        ("missing.jsonl", None, "does not exist"),
    ],
)
def test_a_broken_label_file_is_one_line_naming_it(
    name: str, content: bytes | None, says: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(cli, ["score", "--labels", str(path)])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert str(path) in line and says in line
    assert "labelled instances (instruction, input, output, label)" in line
