"""Instruction filters (Self-Instruct's, one case per reason); stage 3's format-talk tests."""

from __future__ import annotations

import pytest

from refine_af.filters import (
    copies_instruction,
    instance_reasons,
    instruction_drop_reason,
    needs_input,
    talks_about_format,
)


@pytest.mark.parametrize(
    ("text", "cut_off", "reason"),
    [
        ("Give three tips for staying healthy.", True, "cut_off"),
        ("Summarize this text briefly", False, None),  # 4 words
        ("Summarize the text.", False, "too_short"),  # 3 words
        ("Tell me.", False, "too_short"),
        ("word " * 151, False, "too_long"),
        ("Describe the image shown below in detail.", False, "unsuitable_keyword"),
        ("Plot the sales numbers for each month.", False, "unsuitable_keyword"),
        ("Explain how to go to the nearest station.", False, "unsuitable_keyword"),
        ("Read the attached FILES and list the names.", False, "unsuitable_keyword"),
        ("Write a program that sorts a list of numbers.", False, "write_a_program"),
        ('"Quote" this sentence back to me please.', False, "starts_with_punctuation"),
        ("- Make a list of fruits that are red.", False, "starts_with_punctuation"),
        ("Ñame the capital cities of five countries.", False, "starts_with_non_ascii"),
    ],
)
def test_each_filter(text: str, cut_off: bool, reason: str | None) -> None:
    assert instruction_drop_reason(text, cut_off) == reason


def test_keywords_match_whole_words_only() -> None:
    # "profile" contains "file" and "mapping" contains "map": not whole words, so kept.
    assert instruction_drop_reason("Update the user profile with a new email.", False) is None
    assert instruction_drop_reason("Explain the mapping between keys and values.", False) is None
    # 150 words is allowed; 151 is not.
    assert instruction_drop_reason("word " * 150, False) is None


# ---------------------------------------------------------------------------------------------
# Stage 3's format-talk and instruction-copy tests (generate_instances.drop_non_instances).


@pytest.mark.parametrize(
    ("input_text", "output_text"),
    [
        # Read in the default's stage-3 data after RL without these tests (docs/data_read.md).
        ("Task", "Output is None."),
        ("task", "Task"),
        ('"Output"', "Yes"),
        ("Task and Output", "Neither"),
        ("", 'Output: Output is "Task".'),
        ("Task: Provide example output", "The best way is to set goals."),
        ("", "The task is not provided, so the output is None."),
        ("You are given a sentence.", "The output of the task is a sentence."),
        ("<the sentence to edit>", "An edited sentence."),
        ("lawyer", "None"),  # the format's word for "no input", written as the output
        ("A sentence.", "**Output:** A sentence, edited."),
    ],
)
def test_talk_about_the_task_or_its_format(input_text: str, output_text: str) -> None:
    assert talks_about_format(input_text, output_text)


@pytest.mark.parametrize(
    ("input_text", "output_text"),
    [
        ("We found that the first method works best.", "The first method works best."),
        ("", "Why did the chicken cross the road? To get to the other side."),
        ("Night : Day :: Right : Left", "They are opposites."),
        ("Set: {3,12,7,2,8,4}\nTarget sum: 14", "{12,2}, {7,3,4}"),  # "Set:" is content
        ("", "Knock, knock! Who's there? Input."),  # the word alone is not talk
    ],
)
def test_instances_are_not_format_talk(input_text: str, output_text: str) -> None:
    assert not talks_about_format(input_text, output_text)


def test_format_talk_spares_nearly_all_human_written_seed_instances(seed_tasks_file) -> None:
    import json

    pairs = [
        (instance["input"], instance["output"])
        for line in seed_tasks_file.open()
        for instance in json.loads(line)["instances"]
    ]
    flagged = [pair for pair in pairs if talks_about_format(*pair)]
    # Two seed outputs say "the task" ("Sorry, the task involves personal information").
    assert len(pairs) == 175 and len(flagged) <= 2


def test_a_field_that_repeats_the_instruction() -> None:
    instruction = "Given a sentence with multiple clauses, find the most suitable clause."
    assert copies_instruction(instruction, instruction, "The first clause.")
    assert copies_instruction(
        instruction, "", "Given a sentence with multiple clauses, output the most suitable clause."
    )
    assert not copies_instruction(instruction, "I ran, and she walked.", "she walked")
    # Short instructions are left alone: their words recur in honest answers.
    assert not copies_instruction("Name a colour.", "", "Name a colour: blue.")


def test_instance_reasons_test_format_only_when_given_the_instruction() -> None:
    candidates = [("Task", "Output is the task.", False), ("2 and 3", "5", False)]
    assert instance_reasons(candidates) == [None, None]
    assert instance_reasons(candidates, instruction="Add the two numbers.") == [
        "format_talk",
        None,
    ]
    assert instance_reasons(
        [("Add the two given numbers together.", "5", False)],
        instruction="Add the two given numbers together.",
    ) == ["copies_instruction"]


@pytest.mark.parametrize(
    ("instruction", "needs"),
    [
        ("Translate this sentence into English.", True),
        ("Provide a phrase that is unique to the given sentence.", True),
        ("Write a piece of text that includes the following words:", True),
        ("Identify all the categories that this article belongs to.", True),
        ("Expand the passage in the list below:", True),
        ("Calculate the average of two lists.", True),
        ("Write a short story using only 3 sentences.", False),
        ("Create a list of 100 words that contain the word fantasy.", False),
        ("Write a python function that sorts a list from large to small.", False),
        ("Tell me a dad joke that has three sentences, each containing at least a pun.", False),
    ],
)
def test_instructions_that_speak_of_a_given_input(instruction: str, needs: bool) -> None:
    assert needs_input(instruction) is needs


def test_a_task_that_speaks_of_its_input_needs_one() -> None:
    instruction = "Translate this sentence into English."
    candidates = [
        ("", "We took a lot of time to translate the sentence into English."),
        ("Je suis content.", "I am happy."),
    ]
    assert instance_reasons([(i, o, False) for i, o in candidates], instruction=instruction) == [
        "missing_input",
        None,
    ]
    # A task that needs no input keeps its input-free instances.
    assert instance_reasons(
        [("", "Why did the chicken cross the road?", False)],
        instruction="Come up with a question and a funny answer as a joke.",
    ) == [None]
