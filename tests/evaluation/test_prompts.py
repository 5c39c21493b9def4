"""The Tk-Instruct / Self-Instruct SuperNI prompts."""

from __future__ import annotations

from refine_af.evaluation.prompts import format_prompt

DOC = {
    "definition": "Answer the question",
    "input": "What is 2+2?",
    "positive_examples": [
        {"input": "1+1", "output": "2"},
        {"input": "2+3?", "output": "5."},
        {"input": "unused", "output": "unused"},
    ],
}


def test_definition_prompt() -> None:
    assert format_prompt(DOC) == (
        "Definition: Answer the question.\n\n"
        "Now complete the following example -\nInput: What is 2+2?\nOutput:"
    )


def test_no_period_after_punctuation() -> None:
    doc = {**DOC, "definition": "Answer it!  ", "input": " no mark"}
    assert format_prompt(doc).startswith("Definition: Answer it!\n\n")
    assert format_prompt(doc).endswith("Input: no mark.\nOutput:")


def test_two_positive_examples() -> None:
    assert format_prompt(DOC, num_pos_examples=2) == (
        "Definition: Answer the question.\n\n"
        " Positive Example 1 -\nInput: 1+1.\n Output: 2.\n\n"
        " Positive Example 2 -\nInput: 2+3?\n Output: 5.\n\n"
        "Now complete the following example -\nInput: What is 2+2?\nOutput:"
    )
