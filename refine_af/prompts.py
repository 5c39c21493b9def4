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


def render_chat(tokenizer: Any, user: str, assistant_prefix: str, use_chat_template: bool) -> str:
    """A prompt string: the chat template with a pre-filled assistant turn, or plain text."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return head + assistant_prefix
    return f"{user}\n{assistant_prefix}" if assistant_prefix else user


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
            items.append([match.group(1)])
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
