"""The policy's instance format: prompt shape and the lenient-but-safe parser."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refine_af.instance_format import (
    DEMONSTRATIONS,
    EMPTY_INPUT_WORDS,
    OUTPUT_MARKER,
    ParsedInstance,
    demonstrations_for,
    instance_prompt,
    parse_instance,
)


def test_prompt_ends_with_prefilled_input_marker(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = instance_prompt(tokenizer, "  Write a   haiku\nabout rain. ", use_chat_template=True)
    assert prompt.endswith("<|im_start|>assistant\nInput:")
    assert prompt.endswith(
        "Task: Write a haiku about rain.<|im_end|>\n<|im_start|>assistant\nInput:"
    )
    plain = instance_prompt(tokenizer, "Add two numbers.", use_chat_template=False)
    assert "<|im_start|>" not in plain and plain.endswith("Task: Add two numbers.\nInput:")


def test_the_chosen_demonstrations_come_first_as_answered_turns(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = instance_prompt(tokenizer, "Add two numbers.")
    shown = prompt.rsplit("<|im_start|>user", 1)[0]  # all but the asked task's turn
    chosen = demonstrations_for("Add two numbers.")
    for task, input_text, output in DEMONSTRATIONS:
        answer = f"<|im_start|>assistant\nInput: {input_text or 'None'}\nOutput: {output}<|im_end|>"
        assert (answer in shown) == ((task, input_text, output) in chosen)
        assert (f"Task: {task}<|im_end|>" in shown) == ((task, input_text, output) in chosen)
    positions = [shown.index(f"Task: {task}<|im_end|>") for task, _, _ in chosen]
    assert positions == sorted(positions)
    # What the completion is read back with recovers each demonstration.
    for _, input_text, output in DEMONSTRATIONS:
        assert parse_instance(f" {input_text or 'None'}\nOutput: {output}<|im_end|>") == (
            ParsedInstance(input_text, output)
        )


def test_demonstrations_depend_on_the_instruction_only():
    chosen = demonstrations_for("Add two numbers.")
    assert demonstrations_for("  Add two\nnumbers. ") == chosen  # the same request, reformatted
    assert len(chosen) == 3 and len(set(chosen)) == 3
    assert sum(1 for _, input_text, _ in chosen if input_text) == 2  # one shows "None"
    # Over many instructions every demonstration is shown, in varying orders: no single voice.
    many = [demonstrations_for(f"Task number {n}.") for n in range(200)]
    assert {d for demos in many for d in demos} == set(DEMONSTRATIONS)
    assert len({demos[-1] for demos in many}) == len(DEMONSTRATIONS)
    assert not any(output.startswith("We ") for _, _, output in DEMONSTRATIONS)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (" 2 and 3\nOutput: 5", ParsedInstance("2 and 3", "5")),
        (" None\nOutput: A haiku.", ParsedInstance("", "A haiku.")),
        (" N/A.\noutput: yes", ParsedInstance("", "yes")),
        ("\n\nOutput:\nThe answer<|im_end|>", ParsedInstance("", "The answer")),
        (" x\n**Output:** y\nInput: another\nOutput: z", ParsedInstance("x", "y")),
        ("Input: cat\nOutput: animal", ParsedInstance("cat", "animal")),
        (" text Output: label", ParsedInstance("text", "label")),
        (" a\nOutput: b\n\nTask: next one", ParsedInstance("a", "b")),
    ],
)
def test_parses_what_small_models_write(completion, expected):
    assert parse_instance(completion) == expected


@pytest.mark.parametrize(
    ("completion", "runs_on"),
    [
        (" 2 and 3\nOutput: 5", False),
        (" 2 and 3\nOutput: 5\n", False),
        ("\n\nOutput:\nThe answer<|im_end|>", False),
        (" a\nOutput: line one\nline two", False),
        (" None\nOutput: None\nOutput: None\nOutput: None", True),
        (" x\n**Output:** y\nInput: another\nOutput: z", True),
        (" a\nOutput: b\n\nTask: next one", True),
    ],
)
def test_says_whether_the_completion_ran_on_after_its_output(completion, runs_on):
    parsed = parse_instance(completion)
    assert parsed is not None and parsed.runs_on is runs_on


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "   ",
        " just some text without the marker",
        " input only\nOutput:   ",
        " input\nOutput: <|im_end|>",
        " <the input, or None>\nOutput: 5",
        " 3\nOutput: <the correct output>",
        " a<|im_end|><|im_start|>user\nOutput: b",
        "Output",
    ],
)
def test_unusable_completions_are_none(completion):
    assert parse_instance(completion) is None


def test_non_string_is_none():
    assert parse_instance(None) is None  # type: ignore[arg-type]


_field_text = st.text(alphabet=string.ascii_letters + string.digits + " ,.!?'-", min_size=1)


@settings(max_examples=200, deadline=None)
@given(_field_text, _field_text)
def test_round_trip(input_text, output):
    """A completion in the format the prompt asks for is read back (for plain field text)."""
    input_text, output = input_text.strip(" *_"), output.strip(" *_")
    if not output or "output" in input_text.lower() or "output" in output.lower():
        return
    parsed = parse_instance(f" {input_text or 'None'}\n{OUTPUT_MARKER} {output}")
    assert parsed is not None
    assert parsed.output == output
    if input_text.lower().strip(" .()[]<>\"'") not in EMPTY_INPUT_WORDS:
        assert parsed.input == input_text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_and_output_never_empty(text):
    parsed = parse_instance(text)
    assert parsed is None or parsed.output.strip() != ""
