"""Stage 3b: completion-only loss, a training step that moves the adapter, PEFT reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refine_af.errors import UserError
from refine_af.prompts import training_completion, training_prompt
from refine_af.run_dir import RunDirectory
from refine_af.stages import sft
from refine_af.train_config import load_config


def make_instances(run: Path, n: int = 6) -> None:
    folder = run / "instances" / "baseline"
    folder.mkdir(parents=True)
    with (folder / "instances.jsonl").open("w") as handle:
        for i in range(n):
            record = {
                "id": f"gen_{i}-0",
                "instruction_id": f"gen_{i}",
                "instruction": f"Add one to the number {i}.",
                "input": str(i) if i else "",
                "output": str(i + 1),
                "is_classification": False,
            }
            handle.write(json.dumps(record) + "\n")


def tiny_config(run: Path, model: Path, *overrides: str):
    return load_config(
        "default",
        [
            f"run.output_dir={run}",
            f"run.model={model}",
            "sft.max_steps=2",
            "sft.per_device_train_batch_size=4",
            "sft.learning_rate=0.01",
            "sft.logging_steps=1",
            "sft.max_length=64",
            *overrides,
        ],
    )


def test_training_format() -> None:
    assert training_prompt("Sum them.", "1 2") == "Sum them.\nInput: 1 2\nOutput:"
    assert training_prompt("Say hi.", " ") == "Say hi.\nOutput:"
    assert training_completion(" 3 ") == " 3"


def test_prompt_tokens_are_masked(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    make_instances(tmp_path)
    config = tiny_config(tmp_path, tiny_model_dir)
    examples = sft.training_examples(tmp_path / "instances/baseline/instances.jsonl")
    trainer = sft.build_trainer(config, examples, tmp_path / "ckpt", str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = trainer.train_dataset[1]
    prompt_ids = tokenizer(examples[1]["prompt"], add_special_tokens=False)["input_ids"]
    labels = row["labels"]
    assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
    completion = [t for t in labels if t != -100]
    assert tokenizer.decode(completion) == examples[1]["completion"] + tokenizer.eos_token


def test_sft_trains_saves_and_reloads(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    make_instances(tmp_path)
    config = tiny_config(tmp_path, tiny_model_dir, "sft.merge=true")
    run_dir = RunDirectory(tmp_path)
    summary = sft.run(config, run_dir, "baseline")
    adapter = tmp_path / "sft/baseline/adapter"
    assert summary["steps"] == 2 and (adapter / "adapter_config.json").is_file()
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it moved
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(adapter))
    assert any("lora_" in name for name, _ in model.named_parameters())
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "sft/baseline/merged")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)
    # Same instances and settings: skipped; changed settings: retrained.
    assert sft.run(config, run_dir, "baseline")["skipped"] is True
    changed = tiny_config(tmp_path, tiny_model_dir, "sft.max_steps=1")
    assert sft.run(changed, run_dir, "baseline")["steps"] == 1
    capped = tiny_config(tmp_path, tiny_model_dir, "sft.max_steps=1", "sft.max_train_instances=4")
    assert sft.run(capped, run_dir, "baseline")["examples"] == 4


def test_missing_instances_is_a_user_error(tmp_path: Path, tiny_model_dir: Path) -> None:

    with pytest.raises(UserError, match="generate-instances"):
        sft.run(tiny_config(tmp_path, tiny_model_dir), RunDirectory(tmp_path), "baseline")


def test_chat_format_trains_on_the_assistant_turn_only(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """sft.text_format=chat: the request is the user turn, rendered by the chat template (what
    an eval row with apply_chat_template sees); only the assistant's output carries loss."""
    from transformers import AutoTokenizer

    make_instances(tmp_path)
    config = tiny_config(tmp_path, tiny_model_dir, "sft.text_format=chat")
    examples = sft.training_examples(
        tmp_path / "instances/baseline/instances.jsonl", text_format="chat"
    )
    assert examples[1]["prompt"] == [
        {"role": "user", "content": "Add one to the number 1.\nInput: 1\nOutput:"}
    ]
    trainer = sft.build_trainer(config, examples, tmp_path / "ckpt", str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat_prompt = tokenizer.apply_chat_template(
        examples[1]["prompt"], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(chat_prompt, add_special_tokens=False)["input_ids"]
    row = trainer.train_dataset[1]
    assert row["input_ids"][: len(prompt_ids)] == prompt_ids
    labels = row["labels"]
    assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
    completion = tokenizer.decode([t for t in labels if t != -100])
    assert completion.startswith("2") and "Output" not in completion


def test_a_max_length_the_template_fills_is_a_one_line_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The chat template's own turns (~30 tokens) fill sft.max_length=16: no example is left,
    which says what to raise instead of failing in the data loader."""
    make_instances(tmp_path)
    config = tiny_config(tmp_path, tiny_model_dir, "sft.text_format=chat", "sft.max_length=16")
    with pytest.raises(UserError, match=r"raise sft\.max_length"):
        sft.run(config, RunDirectory(tmp_path), "baseline")


def test_max_train_instances_draws_a_seeded_subset_in_file_order(tmp_path: Path) -> None:
    """A size-matched comparison: N instances drawn with run.seed from the whole set (not its
    first N, which would hold only the first instructions), kept in file order."""
    make_instances(tmp_path, n=40)
    path = sft.instances_path(RunDirectory(tmp_path), "baseline")
    numbers = [
        [int(e["completion"].split()[-1]) - 1 for e in sft.training_examples(path, 10, seed=s)]
        for s in (1, 1, 2)
    ]
    assert numbers[0] == numbers[1] and numbers[0] != numbers[2]
    assert all(len(n) == 10 and n == sorted(n) for n in numbers)
    assert max(numbers[0]) >= 10  # not simply the first ten
    assert len(sft.training_examples(path, 100, seed=1)) == 40  # a limit above the size: all
