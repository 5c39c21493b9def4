"""The policy's instance format: the prompt that asks for one instance of a task, and its parser.

Stage 2 (RL) and stage 3 (instance generation) both ask a model to write one input–output
instance for an instruction. The prompt shows the format and pre-fills the assistant turn with
``Input:``, so the completion looks like::

     <the input, or None>
    Output: <the output>

and :func:`parse_instance` recovers ``(input, output)`` from it. Parsing is deliberately lenient
about what small models do (missing space, ``output:`` in lower case, markdown bold, a second
example appended after the first, a trailing end-of-turn token) and strict about what makes an
instance useless (no ``Output:`` marker, empty output): those return ``None``, which RL turns into
the format penalty and stage 3 drops.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Any

from refine_af.prompts import render_chat

INPUT_MARKER = "Input:"
OUTPUT_MARKER = "Output:"
# Words a model writes for "this task takes no input"; matched after stripping punctuation.
EMPTY_INPUT_WORDS = frozenset(
    {"", "none", "n/a", "na", "no input", "empty", "null", "nothing", "not applicable", "-"}
)

# Seed tasks' instances shown as earlier turns of the conversation: the format with real content
# in it. Asked without them, SmolLM2-135M-Instruct echoed the request's own words ("Input: Task",
# "Output: Output is ...") or its placeholders in 1 of 4 parsed completions, and RL on top of that
# learned to write nothing else (docs/data_read.md); with them, 1 in 20 (docs/stages.md).
# Each prompt shows three of these, chosen by its instruction (:func:`demonstrations_for`): two
# with an input and one without. With the same three for every prompt, two of them first-person
# sentences, the RL-tuned model wrote "We ..." sentences for any task (48 of 190 kept outputs);
# a pool gives it no single voice to copy. All short, none a class label (Yes, positive), no
# "We".
DEMONSTRATIONS_WITH_INPUT = (
    (
        "Come up with the synonyms of the word.",
        "surprisingly",
        "amazingly, astonishingly, unexpectedly, incredibly, unbelievably",
    ),
    ("Answer the following question.", "When did US land human on the moon?", "July 20, 1969."),
    (
        "Sort the given list ascendingly.",
        "List: [10, 2, 5, -4, 92, 101]",
        "[-4, 2, 5, 10, 92, 101]",
    ),
    ("Convert the following measurement.", "3 ft = _____ in.", "3 ft = 36 in."),
    (
        "Given a sentence that is assertive, convert it to a sentence that hedges or introduces "
        "uncertainty.",
        "It's going to rain tomorrow.",
        "It's likely to rain tomorrow.",
    ),
    (
        "Select the oldest person from the list.",
        "George Washington, Confucius, Michael Jordan, Michelangelo",
        "Confucius",
    ),
    (
        "Fill in the blank with a word or phrase.",
        "The Houston Rockets are an American professional ___ team based in Houston.",
        "basketball",
    ),
)
DEMONSTRATIONS_WITHOUT_INPUT = (
    ("Make up a new flavor of ice cream.", "", "Popcorn jelly bean ice cream"),
    ("Give me a phrase that I can use to express I am very happy.", "", "I am over the moon!"),
    ("Find the four smallest perfect numbers.", "", "6, 28, 496, and 8128"),
)
DEMONSTRATIONS = DEMONSTRATIONS_WITH_INPUT + DEMONSTRATIONS_WITHOUT_INPUT
# Their inputs and outputs: an instance repeating one is a copy of a prompt, not a new one.
DEMONSTRATION_TEXTS = tuple(text for _, *fields in DEMONSTRATIONS for text in fields if text)


def demonstrations_for(instruction: str) -> list[tuple[str, str, str]]:
    """The three demonstrations the prompt for ``instruction`` shows, in order.

    Chosen by a hash of the instruction, not by the run's random state: RL and stage 3 then show
    an instruction the same demonstrations, and a resumed stage builds the same prompts.
    """
    digest = hashlib.sha256(" ".join(instruction.split()).encode()).digest()
    chooser = random.Random(int.from_bytes(digest[:8], "big"))
    chosen = [
        *chooser.sample(DEMONSTRATIONS_WITH_INPUT, 2),
        chooser.choice(DEMONSTRATIONS_WITHOUT_INPUT),
    ]
    chooser.shuffle(chosen)
    return chosen


# The demonstrations show the format, so the request only names it.
INSTANCE_REQUEST = (
    "Write one example of the task below: an input for the task and the correct output for that "
    "input, as Input: and Output: lines. If the task needs no input, write None as the input.\n\n"
    "Task: {instruction}"
)

# ``Output:`` at a line start (or right after the input on the same line), tolerating markdown
# emphasis and case; the first one separates input from output.
_OUTPUT_RE = re.compile(r"(?:^|\s)[*_#\s]*output[*_]*\s*:[*_]*", re.IGNORECASE)
# Where the output ends: the model starting another example or another turn.
_OUTPUT_END_RE = re.compile(
    r"\n\s*[*_#]*\s*(?:input|output|task|example|instruction)\s*\d*[*_]*\s*:|"
    r"<\|im_end\|>|<\|endoftext\|>|</s>|<\|im_start\|>|<\|eot_id\|>",
    re.IGNORECASE,
)
_SPECIAL_RE = re.compile(r"<\|[^|<>]*\|>|</s>")
# The format's own placeholders copied back ("<the input, or None>"): not an instance.
_PLACEHOLDER_RE = re.compile(r"^<\s*the (?:input|correct output)\b[^>]*>$", re.IGNORECASE)
_LEADING_INPUT_RE = re.compile(r"^\s*[*_#]*\s*input[*_]*\s*:[*_]*", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedInstance:
    """One instance: ``input`` is ``""`` when the task takes none; ``output`` is never empty.

    ``runs_on``: the completion went on after the output with another field (``Output:``,
    ``Input:``, ``Task:``, ...) instead of ending its turn. The instance is still read from the
    first fields; stage 2 uses the flag to teach the policy to stop (:func:`rewards.keepable`).
    """

    input: str
    output: str
    runs_on: bool = field(default=False, compare=False)


def instance_request(instruction: str) -> str:
    """The user-turn text asking for one instance of ``instruction``."""
    return INSTANCE_REQUEST.format(instruction=" ".join(instruction.split()))


def _answer(input_text: str, output: str) -> str:
    return f"{INPUT_MARKER} {input_text or 'None'}\n{OUTPUT_MARKER} {output}"


def instance_prompt(tokenizer: Any, instruction: str, use_chat_template: bool = True) -> str:
    """The full prompt string, ending with the pre-filled ``Input:`` the completion continues.

    Three :data:`DEMONSTRATIONS` come first (:func:`demonstrations_for`), each as a request and
    its answer; the generation backend computes a prompt once for all its sampled completions.
    """
    turns = [
        (instance_request(task), _answer(input_text, output))
        for task, input_text, output in demonstrations_for(instruction)
    ]
    return render_chat(
        tokenizer, instance_request(instruction), INPUT_MARKER, use_chat_template, history=turns
    )


def _clean(text: str) -> str:
    """Trim whitespace and markdown emphasis left around a field."""
    return text.strip().strip("*_").strip()


def parse_instance(completion: str) -> ParsedInstance | None:
    """Split a completion of :func:`instance_prompt` into input and output; None if unusable.

    ``completion`` is the text after the pre-filled ``Input:``; a completion that repeats the
    ``Input:`` marker itself is accepted too. Unusable means: no ``Output:`` marker, or nothing
    but whitespace (or an end-of-turn token) after it, or the format's placeholder text copied
    back instead of an input or output.
    """
    if not isinstance(completion, str):
        return None
    text = completion.replace("\r\n", "\n")
    leading = _LEADING_INPUT_RE.match(text)
    if leading:
        text = text[leading.end() :]
    match = _OUTPUT_RE.search(text)
    if match is None:
        return None
    raw_input, rest = text[: match.start()], text[match.end() :]
    end = _OUTPUT_END_RE.search(rest)
    output = _clean(rest[: end.start()] if end else rest)
    runs_on = end is not None and _SPECIAL_RE.fullmatch(end.group()) is None
    if not output or _PLACEHOLDER_RE.match(output):
        return None
    # A special token inside the input means the model left the format (a new turn, say).
    if _SPECIAL_RE.search(raw_input):
        return None
    input_text = _clean(raw_input)
    if _PLACEHOLDER_RE.match(input_text):
        return None
    if input_text.lower().strip(" .()[]<>\"'") in EMPTY_INPUT_WORDS:
        input_text = ""
    return ParsedInstance(input=input_text, output=output, runs_on=runs_on)
