"""Self-Instruct's heuristic filters (SPEC section 2), each returning the reason it drops for.

Filters are pure functions of the text so they can be tested one by one; the similarity filter,
which depends on the pool, lives in :mod:`refine_af.similarity`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Collection, Sequence

MIN_INSTRUCTION_WORDS = 4  # "3 words or fewer" is dropped
MAX_INSTRUCTION_WORDS = 150
# Tasks a text-only model cannot do; matched as whole words.
UNSUITABLE_WORDS = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
)
_UNSUITABLE = re.compile(
    r"\b(" + "|".join(re.escape(w) for w in UNSUITABLE_WORDS) + r")\b", re.IGNORECASE
)

# Reasons, in the order they are checked; counts are reported under these names.
INSTRUCTION_DROP_REASONS = (
    "cut_off",
    "too_short",
    "too_long",
    "unsuitable_keyword",
    "write_a_program",
    "starts_with_punctuation",
    "starts_with_non_ascii",
    "not_a_task",  # the instruction judge's P(Yes) is below the threshold (refine_af.judges)
    "too_similar",
)


def instruction_drop_reason(text: str, cut_off: bool) -> str | None:
    """Why a generated instruction is dropped, or None to keep it (before the similarity check).

    ``cut_off`` is True when this is the last item of a completion that hit the length limit.
    """
    if cut_off:
        return "cut_off"
    words = text.split()
    if len(words) < MIN_INSTRUCTION_WORDS:
        return "too_short"
    if len(words) > MAX_INSTRUCTION_WORDS:
        return "too_long"
    if _UNSUITABLE.search(text):
        return "unsuitable_keyword"
    if text.lower().startswith("write a program"):
        return "write_a_program"
    if text[0] in string.punctuation:
        return "starts_with_punctuation"
    if not text[0].isascii():
        return "starts_with_non_ascii"
    return None


# ---------------------------------------------------------------------------------------------
# Stage 3: instance filters (Self-Instruct's ``filter_invalid_instances`` and
# ``filter_duplicate_instances``, plus a cut-off check and the decontamination hook).

# Reasons an instance is dropped, in the order they are checked; counts use these names.
INSTANCE_DROP_REASONS = (
    "cut_off",  # the last example of a completion that hit the token limit
    "empty_output",
    "input_equals_output",
    "field_ends_with_colon",  # "Output: Here are some ideas:" is an unfinished generation
    "format_talk",  # talk about the task or the format instead of an instance (drop_non_instances)
    "copies_instruction",  # a field repeats the instruction (drop_non_instances)
    "missing_input",  # no input for a task that speaks of a given one (drop_non_instances)
    "copied_demonstration",  # repeats an example shown in the prompt (small models do)
    "near_copy_of_demonstration",  # ROUGE-L above the threshold against one (refine_af.judges)
    "contaminated",  # overlaps the SuperNI test data (refine_af.decontamination)
    "not_carried_out",  # the output judge's P(Yes) is below the threshold (refine_af.judges)
    "duplicate",  # the same (input, output) pair again
    "conflicting_outputs",  # one non-empty input with two outputs in one completion: all dropped
    "same_input",  # an input an earlier completion of the task already has an instance for
    "over_limit",  # beyond max_instances_per_instruction
)


def instance_drop_reason(input_text: str, output_text: str, cut_off: bool) -> str | None:
    """Why one instance is dropped on its own (no comparison with the task's other instances)."""
    if cut_off:
        return "cut_off"
    if not output_text.strip():
        return "empty_output"
    if input_text.strip() == output_text.strip():
        return "input_equals_output"
    if input_text.strip().endswith(":") or output_text.strip().endswith(":"):
        return "field_ends_with_colon"
    return None


# Talk about the task or its format instead of an instance: a small model asked for "Input: ...
# Output: ..." echoes the request's words ("Input: Task", "Output: Output is ...", "The task is
# to ...") or its placeholders. RL on the default learned to write little else, because neither
# the judge nor the Self-Instruct filters see it (docs/data_read.md). Of the 175 seed tasks'
# instances, 2 trip it ("Sorry, the task involves personal information").
_FORMAT_LABELS = frozenset(
    {"task", "input", "output", "example", "the task", "the input", "the output"}
    | {"task and output", "input and output", "none"}
)
_FORMAT_MARKER_RE = re.compile(r"(?:^|[\s*_#(\"'])(?:input|output|task)s?\s*\d*\s*[*_]*:", re.I)
_FORMAT_META_RE = re.compile(
    r"\b(?:(?:the|this|that|a|an|given|specified|example) (?:task|output|input)s?"
    r"|(?:output|input|task)s? (?:is|was|are|of|should|must|will|contains?|provided))\b",
    re.I,
)
_PLACEHOLDER_RE = re.compile(r"^<[^<>]*>$")
COPIED_INSTRUCTION_RECALL = 0.8  # share of the instruction's words a field holds, in order


def talks_about_format(input_text: str, output_text: str) -> bool:
    """A field is a bare label ("Task"), a placeholder ("<the input>"), holds a field marker
    ("Output:") or speaks of the task, its input or output ("the task", "output is")."""
    for text in (input_text, output_text):
        bare = " ".join(text.lower().strip(" .,:;()[]\"'`*_").split())
        if text.strip() and bare in _FORMAT_LABELS:
            return True
        if _PLACEHOLDER_RE.match(text.strip()) or _FORMAT_MARKER_RE.search(text):
            return True
        if _FORMAT_META_RE.search(text):
            return True
    return False


# An instruction that speaks of material it is given: "the given sentence", "the following
# words", "this article", "the list below". Its instance needs an input. After RL without this
# test, 75 of the default's 264 kept REFINE-AF instances were such tasks with no input and a
# made-up sentence as the output ("Translate this sentence into English." -> "We took a lot of
# time to translate the sentence into English."); 4 of the baseline's 183. Of the 175 seed tasks,
# 2 trip it, and both carry their material in the instruction itself.
_GIVEN_MATERIAL_RE = re.compile(
    r"\b(?:given|following|provided|this|these)\s+(?:\w+\s+)?"
    r"(?:text|sentences?|article|lists?|paragraph|passage|paper|code|words?|numbers?|question"
    r"|review|story|document|data|table|arrays?|string|phrase|poem|email|dialogue|conversation"
    r"|description|statement|title|input|information|set)\b"
    r"|\b(?:original|two)\s+lists?\b|\b(?:list|passage|text|paragraph)\s+(?:below|above)\b",
    re.IGNORECASE,
)


def needs_input(instruction: str) -> bool:
    """The instruction speaks of material it is given ("the given sentence", "this article")."""
    return bool(_GIVEN_MATERIAL_RE.search(instruction))


def copies_instruction(instruction: str, input_text: str, output_text: str) -> bool:
    """The input or output holds most of the instruction's words, in order (ROUGE-L recall
    above :data:`COPIED_INSTRUCTION_RECALL`): the task restated, not an instance of it."""
    from refine_af.similarity import lcs_length

    wanted = instruction.lower().split()
    if len(wanted) < MIN_INSTRUCTION_WORDS:
        return False
    return any(
        lcs_length(wanted, text.lower().split()) / len(wanted) > COPIED_INSTRUCTION_RECALL
        for text in (input_text, output_text)
    )


def _normalized(text: str) -> str:
    return " ".join(text.lower().strip(" \t\n\"'").split())


def _copies(text: str, shown: set[str]) -> bool:
    """The text, or its first line (commentary often follows a copy), is a demonstration."""
    return _normalized(text) in shown or _normalized(text.strip().split("\n", 1)[0]) in shown


def instance_reasons(
    candidates: list[tuple[str, str, bool]],
    is_contaminated: Callable[[str, str], bool] | None = None,
    demonstrations: Collection[str] = (),
    near_copy: Callable[[str], bool] | None = None,
    instruction: str | None = None,
) -> list[str | None]:
    """The reason each ``(input, output, cut_off)`` candidate is dropped on its own, or None.

    An input or output equal to one of the prompt's ``demonstrations`` is a copy, not a new
    instance; ``near_copy`` (when given) also catches copies with a word or two changed. With
    ``instruction`` given, format talk, copies of the instruction and a missing input for a
    task that speaks of one are dropped too.
    """
    shown = {_normalized(text) for text in demonstrations} - {""}
    reasons: list[str | None] = []
    for input_text, output_text, cut_off in candidates:
        reason = instance_drop_reason(input_text, output_text, cut_off)
        if reason is None and instruction is not None:
            if talks_about_format(input_text, output_text):
                reason = "format_talk"
            elif copies_instruction(instruction, input_text, output_text):
                reason = "copies_instruction"
            elif not input_text.strip() and needs_input(instruction):
                reason = "missing_input"
        if reason is None and (_copies(input_text, shown) or _copies(output_text, shown)):
            reason = "copied_demonstration"
        if (
            reason is None
            and near_copy is not None
            and (near_copy(input_text) or near_copy(output_text))
        ):
            reason = "near_copy_of_demonstration"
        if (
            reason is None
            and is_contaminated is not None
            and is_contaminated(input_text, output_text)
        ):
            reason = "contaminated"
        reasons.append(reason)
    return reasons


def task_reasons(
    candidates: list[tuple[str, str, bool]],
    reasons: list[str | None],
    max_instances: int,
    completions: Sequence[int] | None = None,
    scores: Sequence[float | None] | None = None,
) -> list[str | None]:
    """Add the task-level reasons to ``reasons`` (one task's candidates, per-instance reasons
    already set), then keep the first ``max_instances`` survivors in generation order, or, given
    ``scores`` (best-of-n), the ``max_instances`` survivors scored highest (ties: the earlier).

    Exact duplicates go. Within one completion, a non-empty input that got two different outputs
    makes that completion's examples unreliable, so all of them go (Self-Instruct drops the task:
    it has one completion per task). ``completions`` gives each candidate's
    completion when a task has several sampled ones: two samples answering the same input
    differently is what sampling does, not a contradiction in one answer, so the conflict test
    runs per completion and a later completion's instance for an input already answered is
    dropped as ``same_input`` (the first answer is kept).
    """
    reasons = list(reasons)
    groups = list(completions) if completions is not None else [0] * len(candidates)
    seen: set[tuple[str, str]] = set()
    outputs_by_input: dict[tuple[int, str], set[str]] = {}
    for index, (input_text, output_text, _) in enumerate(candidates):
        if reasons[index] is not None:
            continue
        pair = (input_text.strip(), output_text.strip())
        if pair in seen:
            reasons[index] = "duplicate"
            continue
        seen.add(pair)
        if pair[0]:
            outputs_by_input.setdefault((groups[index], pair[0]), set()).add(pair[1])

    conflicted = {group for (group, _), outputs in outputs_by_input.items() if len(outputs) > 1}
    for index, group in enumerate(groups):
        if group in conflicted:
            reasons[index] = reasons[index] or "conflicting_outputs"

    answered: dict[str, int] = {}  # input -> the completion that answered it first
    for index, (input_text, _, _) in enumerate(candidates):
        key = input_text.strip()
        if reasons[index] is not None or not key:
            continue
        first = answered.setdefault(key, groups[index])
        if first != groups[index]:
            reasons[index] = "same_input"

    survivors = [index for index, reason in enumerate(reasons) if reason is None]
    if scores is not None:
        # sorted() is stable: equal scores keep generation order.
        survivors.sort(key=lambda index: -_score(scores[index]))
    for index in survivors[max_instances:]:
        reasons[index] = "over_limit"
    return reasons


def _score(value: float | None) -> float:
    return float("-inf") if value is None else value


def filter_task_instances(
    candidates: list[tuple[str, str, bool]],
    max_instances: int,
    is_contaminated: Callable[[str, str], bool] | None = None,
    demonstrations: Collection[str] = (),
    near_copy: Callable[[str], bool] | None = None,
) -> list[str | None]:
    """The drop reason of each ``(input, output, cut_off)`` candidate of ONE task, or None to keep:
    :func:`instance_reasons`, then :func:`task_reasons` on the survivors."""
    reasons = instance_reasons(candidates, is_contaminated, demonstrations, near_copy)
    return task_reasons(candidates, reasons, max_instances)
