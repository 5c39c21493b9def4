"""Prompt building and parsing for stage 1."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from refine_af.prompts import (
    INSTRUCTION_HEADER,
    classification_prompt,
    instruction_prompt,
    parse_numbered_instructions,
    parse_yes_no,
    training_completion,
    training_prompt,
)


def tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_instruction_prompt_plain_lists_examples_and_next_number(tokenizer_dir: Path) -> None:
    examples = [f"Do task number {i} well." for i in range(1, 9)]
    prompt = instruction_prompt(tokenizer(tokenizer_dir), examples, use_chat_template=False)
    assert prompt.startswith(INSTRUCTION_HEADER + "\n\n1. Do task number 1 well.\n")
    assert "8. Do task number 8 well.\n9." in prompt
    assert prompt.endswith("9.")


def test_instruction_prompt_uses_chat_template_with_prefilled_answer(tokenizer_dir: Path) -> None:
    tok = tokenizer(tokenizer_dir)
    prompt = instruction_prompt(tok, ["A  multi\nline task."] * 3, use_chat_template=True)
    assert "<|im_start|>user" in prompt and "<|im_start|>assistant" in prompt
    assert prompt.endswith("<|im_start|>assistant\n4.")
    assert "1. A multi line task." in prompt  # whitespace inside an example is folded


def test_parse_numbered_list_continuation() -> None:
    completion = " Name three fruits.\n10. Translate the word to French.\n11) Give a synonym"
    assert parse_numbered_instructions(completion) == [
        ("Name three fruits.", False),
        ("Translate the word to French.", False),
        ("Give a synonym", True),
    ]


def test_parse_joins_continuation_lines_and_skips_empty_items() -> None:
    completion = " Write a haiku\nabout autumn.\n10.\n11. Count the vowels."
    assert parse_numbered_instructions(completion) == [
        ("Write a haiku about autumn.", False),
        ("Count the vowels.", True),
    ]
    assert parse_numbered_instructions(" A\n10. 2. Identify the verb here.") == [
        ("A", False),
        ("Identify the verb here.", True),
    ]
    assert parse_numbered_instructions("") == []
    assert parse_numbered_instructions("   \n  ") == []


@given(st.lists(st.text(alphabet="abc xyz,.", min_size=1, max_size=30), max_size=8))
def test_parse_roundtrip_of_numbered_items(items: list[str]) -> None:
    cleaned = [" ".join(item.split()) for item in items]
    cleaned = [c for c in cleaned if c and not c[0].isdigit()]
    text = " " + "\n".join(f"{i + 10}. {c}" if i else c for i, c in enumerate(cleaned))
    parsed = [t for t, _ in parse_numbered_instructions(text)]
    assert parsed == cleaned


def test_classification_prompt_and_answers(tokenizer_dir: Path) -> None:
    prompt = classification_prompt(
        tokenizer(tokenizer_dir),
        "Is this review positive or negative?",
        [("Sort these numbers.", False), ("Classify the sentiment.", True)],
        use_chat_template=False,
    )
    assert "Task: Sort these numbers.\nIs it classification? No" in prompt
    assert "Task: Classify the sentiment.\nIs it classification? Yes" in prompt
    assert prompt.endswith("Task: Is this review positive or negative?\nIs it classification?")
    assert parse_yes_no(" Yes") is True
    assert parse_yes_no("no.") is False
    assert parse_yes_no(" Maybe") is None
    assert parse_yes_no("") is None


def test_training_format() -> None:
    assert (
        training_prompt("Add the numbers.", "2 and 3")
        == "Add the numbers.\nInput: 2 and 3\nOutput:"
    )
    assert training_prompt("Tell a joke.", "  ") == "Tell a joke.\nOutput:"
    assert training_completion(" 5 ") == " 5"
