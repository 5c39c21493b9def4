"""Every prompt the pipeline writes, in one place.

Stage 1 and stage 3 follow Self-Instruct's prompts (SPEC section 2); the fine-tuning format is the
one Self-Instruct trained on. Prompts for a chat model go through its chat template with the
assistant turn pre-filled, so the model continues our text instead of answering around it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

INSTRUCTION_HEADER = "Come up with a series of tasks:"


def render_chat(
    tokenizer: Any,
    user: str,
    assistant_prefix: str,
    use_chat_template: bool,
    history: Sequence[tuple[str, str]] = (),
) -> str:
    """A prompt string: the chat template with a pre-filled assistant turn, or plain text.

    ``history`` holds earlier (user, assistant) turns, e.g. few-shot demonstrations; as plain text
    each is the user text, a newline and the answer, separated by blank lines.
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": role, "content": text}
            for turn in history
            for role, text in zip(("user", "assistant"), turn, strict=True)
        ]
        head = tokenizer.apply_chat_template(
            [*messages, {"role": "user", "content": user}],
            tokenize=False,
            add_generation_prompt=True,
        )
        return head + assistant_prefix
    shown = "".join(f"{request}\n{answer}\n\n" for request, answer in history)
    return shown + (f"{user}\n{assistant_prefix}" if assistant_prefix else user)


# ---------------------------------------------------------------------------------------------
# Stage 1: instruction generation.


def instruction_prompt(tokenizer: Any, examples: Sequence[str], use_chat_template: bool) -> str:
    """The numbered-list prompt, ending with the number of the task the model writes next.

    The in-context instructions go in the user turn; the assistant turn starts with the next
    number, as in Self-Instruct's plain-text prompt, so the model writes task ``n+1``, ``n+2``...
    """
    listing = "\n".join(
        f"{number}. {' '.join(text.split())}" for number, text in enumerate(examples, 1)
    )
    next_number = len(examples) + 1
    user = f"{INSTRUCTION_HEADER}\n\n{listing}"
    return render_chat(tokenizer, user, f"{next_number}.", use_chat_template)


_NUMBERED_LINE = re.compile(r"^\s*\d{1,3}\s*[.)]\s*(.*)$")


def parse_numbered_instructions(completion: str) -> list[tuple[str, bool]]:
    """Split a completion that continues a numbered list into instructions.

    The completion starts right after the pre-filled number. Every line that starts with a
    number opens a new item (small models often restart the numbering, so the numbers
    themselves are not trusted); other lines continue the current item. Returns
    ``(instruction, is_last)`` pairs; ``is_last`` marks the item a length cut-off may have
    truncated.
    """
    items: list[list[str]] = [[]]
    for line in completion.split("\n"):
        match = _NUMBERED_LINE.match(line)
        if match:
            # "10. 2. Do X": a model that restarts a list inside an item; keep only the task.
            text = match.group(1)
            while nested := _NUMBERED_LINE.match(text):
                text = nested.group(1)
            items.append([text])
        else:
            items[-1].append(line)
    texts = [" ".join(" ".join(parts).split()) for parts in items]
    texts = [text for text in texts if text]
    return [(text, index == len(texts) - 1) for index, text in enumerate(texts)]


CLASSIFICATION_QUESTION = (
    "Can the following task be regarded as a classification task with finite output labels?"
)


def classification_prompt(
    tokenizer: Any,
    instruction: str,
    examples: Sequence[tuple[str, bool]],
    use_chat_template: bool,
) -> str:
    """Few-shot Yes/No prompt; the model's next word is the answer for ``instruction``."""
    shots = "\n\n".join(
        f"Task: {' '.join(text.split())}\nIs it classification? {'Yes' if label else 'No'}"
        for text, label in examples
    )
    user = f"{CLASSIFICATION_QUESTION}\n\n{shots}\n\nTask: {' '.join(instruction.split())}"
    return render_chat(tokenizer, user, "Is it classification?", use_chat_template)


def parse_yes_no(completion: str) -> bool | None:
    """True for Yes, False for No, None when the answer is neither."""
    word = re.match(r"\W*(\w+)", completion)
    if word is None:
        return None
    answer = word.group(1).lower()
    return True if answer == "yes" else False if answer == "no" else None


# ---------------------------------------------------------------------------------------------
# Fine-tuning format (Self-Instruct): the prompt, and the completion the loss is computed on.


def training_prompt(instruction: str, input_text: str) -> str:
    """``"{instruction}\\nInput: {input}\\nOutput:"``, or without the input line when empty."""
    instruction = instruction.strip()
    if input_text.strip():
        return f"{instruction}\nInput: {input_text.strip()}\nOutput:"
    return f"{instruction}\nOutput:"


def training_completion(output: str) -> str:
    return f" {output.strip()}"


# ---------------------------------------------------------------------------------------------
# Stage 3: instance generation (Self-Instruct, SPEC section 2).
#
# Classification tasks are written output-first (a class label, then an input for it) so the
# model cannot keep producing inputs of the majority label; other tasks are written input-first
# ("Example n / Input: ... / Output: ..."). The demonstrations are short because a 135M model on
# a CPU pays for every prompt token; they show the three shapes a model must produce: a task with
# an input, a task without one, and a classification task with two labels.

INSTANCE_INPUT_FIRST_HEADER = (
    "Come up with examples for the following tasks. Try to write several examples. If the task "
    "needs no input, write the output directly."
)
INSTANCE_INPUT_FIRST_DEMOS = (
    "Task: Convert the temperature from Celsius to Fahrenheit.\n\n"
    "Example 1\nInput: 25 degrees Celsius\nOutput: 77 degrees Fahrenheit\n\n"
    "Example 2\nInput: 100 degrees Celsius\nOutput: 212 degrees Fahrenheit\n\n"
    "Task: Suggest a name for a new coffee shop.\n\n"
    "Example 1\nOutput: The Daily Grind\n\n"
    "Example 2\nOutput: Bean There"
)
INSTANCE_OUTPUT_FIRST_HEADER = (
    "Given a classification task and its class labels, write an input for each class label. If "
    "the task needs no input, just list the possible class labels."
)
INSTANCE_OUTPUT_FIRST_DEMOS = (
    "Task: Classify the sentiment of the review as positive or negative.\n"
    "Class label: Positive\nInput: The food was great and the staff were friendly.\n"
    "Class label: Negative\nInput: We waited an hour and the soup was cold.\n\n"
    "Task: Tell me whether the number is even or odd.\n"
    "Class label: Even\nInput: 42\n"
    "Class label: Odd\nInput: 17"
)
# The demonstrations' inputs and outputs of more than one word, per prompt: a generated
# instance that repeats one is a copy of the prompt (class labels such as "Positive" are
# legitimate outputs).
INPUT_FIRST_DEMONSTRATION_TEXTS = (
    "25 degrees Celsius",
    "77 degrees Fahrenheit",
    "100 degrees Celsius",
    "212 degrees Fahrenheit",
    "The Daily Grind",
    "Bean There",
)
OUTPUT_FIRST_DEMONSTRATION_TEXTS = (
    "The food was great and the staff were friendly.",
    "We waited an hour and the soup was cold.",
)
INSTANCE_DEMONSTRATION_TEXTS = INPUT_FIRST_DEMONSTRATION_TEXTS + OUTPUT_FIRST_DEMONSTRATION_TEXTS
# Where a completion must stop: the model starting the next task of the few-shot list.
INSTANCE_STOP = ("\nTask:",)
# Words a model writes for "this task takes no input".
NO_INPUT_WORDS = frozenset({"", "none", "n/a", "na", "null", "no input", "nothing", "empty", "-"})

_EXAMPLE_SPLIT = re.compile(r"(?:^|\n)[ \t]*[*_#]*\s*Example\s*\d+\s*[*_]*\s*:?[*_]*[ \t]*", re.I)
_OUTPUT_FIELD = re.compile(r"(?:^|\n)[ \t]*[*_]*Output\s*\d*\s*[*_]*:", re.I)
_INPUT_FIELD = re.compile(r"(?:^|\n)[ \t]*[*_]*Input\s*\d*\s*[*_]*:", re.I)
_LABEL_SPLIT = re.compile(r"(?:^|\n)[ \t]*[*_]*Class label\s*[*_]*:", re.I)


def instance_generation_prompt(
    tokenizer: Any, instruction: str, is_classification: bool, use_chat_template: bool
) -> str:
    """The few-shot prompt for one instruction; the assistant turn opens the first example.

    Input-first prompts end with ``Example 1`` (the model then writes ``Input:``, or ``Output:``
    for a task without input); output-first prompts end with ``Class label:``.
    """
    task = f"Task: {' '.join(instruction.split())}"
    if is_classification:
        user = f"{INSTANCE_OUTPUT_FIRST_HEADER}\n\n{INSTANCE_OUTPUT_FIRST_DEMOS}\n\n{task}"
        return render_chat(tokenizer, user, "Class label:", use_chat_template)
    user = f"{INSTANCE_INPUT_FIRST_HEADER}\n\n{INSTANCE_INPUT_FIRST_DEMOS}\n\n{task}"
    return render_chat(tokenizer, user, "Example 1\n", use_chat_template)


def _clean_field(text: str) -> str:
    """Trim whitespace and markdown emphasis; map "None"-like inputs to the empty string."""
    return text.strip().strip("*_").strip()


def _no_input(text: str) -> str:
    return "" if text.lower().strip(" .()[]<>\"'") in NO_INPUT_WORDS else text


def parse_input_output(text: str) -> tuple[str, str]:
    """One input-first example's body into ``(input, output)`` (Self-Instruct's rule).

    Text before the first ``Output:`` is the input (its ``Input:`` prefix removed); without an
    ``Output:`` marker the whole text is the output of a task with no input. A second ``Input:``
    inside the output (the model starting another pair) ends the output.
    """
    match = _OUTPUT_FIELD.search(text)
    if match:
        raw_input, raw_output = text[: match.start()], text[match.end() :]
    else:
        raw_input, raw_output = "", text
    following = _INPUT_FIELD.search(raw_output)
    if following:
        raw_output = raw_output[: following.start()]
    leading = _INPUT_FIELD.match(raw_input)
    if leading:
        raw_input = raw_input[leading.end() :]
    return _no_input(_clean_field(raw_input)), _clean_field(raw_output)


def parse_input_first_instances(completion: str) -> list[tuple[str, str, bool]]:
    """Split an input-first completion (continuing ``Example 1``) into instances.

    Returns ``(input, output, is_last)`` triples; ``is_last`` marks the example a length cut-off
    may have truncated. Examples that are blank are skipped.
    """
    pieces = [p for p in _EXAMPLE_SPLIT.split(completion) if p.strip()]
    parsed = [parse_input_output(piece) for piece in pieces]
    return [(inp, out, i == len(parsed) - 1) for i, (inp, out) in enumerate(parsed)]


def parse_output_first_instances(completion: str) -> list[tuple[str, str, bool]]:
    """Split an output-first completion (continuing ``Class label:``) into instances.

    Each ``Class label: L`` block yields ``(input, L, is_last)``; a label without an ``Input:``
    is an instance of a task that takes no input (input ``""``).
    """
    pieces = [p for p in _LABEL_SPLIT.split(completion) if p.strip()]
    instances: list[tuple[str, str]] = []
    for piece in pieces:
        match = _INPUT_FIELD.search(piece)
        if match:
            label, raw_input = piece[: match.start()], piece[match.end() :]
        else:
            label, raw_input = piece, ""
        # Small models often repeat the label as "Output: L" after the input: not input text.
        repeated = _OUTPUT_FIELD.search(raw_input)
        if repeated:
            raw_input = raw_input[: repeated.start()]
        instances.append((_no_input(_clean_field(raw_input)), _clean_field(label)))
    return [(inp, out, i == len(instances) - 1) for i, (inp, out) in enumerate(instances)]


def parse_instances(completion: str, is_classification: bool) -> list[tuple[str, str, bool]]:
    """Parse a completion of :func:`instance_generation_prompt` in the order it was asked for."""
    if is_classification:
        return parse_output_first_instances(completion)
    return parse_input_first_instances(completion)
