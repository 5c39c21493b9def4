"""Self-Instruct's instruction filters, one case per reason."""

from __future__ import annotations

import pytest

from refine_af.filters import instruction_drop_reason


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
