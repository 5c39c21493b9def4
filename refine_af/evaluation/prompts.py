"""The Tk-Instruct / Self-Instruct SuperNI prompt ("definition" and "definition + 2 positives").

Built like Tk-Instruct's ``DataCollatorForNI``: a period is added to the definition, to each
example input/output and to the task input when they do not end in punctuation. The prompt ends
in ``"Output:"`` without a trailing space (the Self-Instruct / GPT-3 form): a causal LM then
writes the leading space itself, which keeps tokenisation natural.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

OUTPUT_CUE = "\nOutput:"  # kept intact when an over-long input is truncated


def _end_with_punctuation(text: str) -> str:
    return text if text and text[-1] in string.punctuation else text + "."


def format_prompt(doc: Mapping[str, Any], num_pos_examples: int = 0) -> str:
    """The prompt for one instance; ``num_pos_examples`` = 0 (definition only) or e.g. 2."""
    definition = _end_with_punctuation("Definition: " + doc["definition"].strip()) + "\n\n"
    examples = []
    for index, example in enumerate(doc.get("positive_examples", [])[:num_pos_examples], 1):
        text = _end_with_punctuation(
            f" Positive Example {index} -\nInput: {example['input'].strip()}"
        )
        text = _end_with_punctuation(text + f"\n Output: {example['output'].strip()}")
        examples.append(text + "\n\n")
    task_input = _end_with_punctuation(
        f"Now complete the following example -\nInput: {doc['input'].strip()}"
    )
    return definition + "".join(examples) + task_input + OUTPUT_CUE
