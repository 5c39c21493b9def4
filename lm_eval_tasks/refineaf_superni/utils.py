"""lm-eval hooks of the ``refineaf_superni`` tasks: data loading, prompts, the official metric.

lm-eval imports this file by path (``!function utils.x``), so it must work without the package
being importable as such: in a source checkout that was not pip-installed, the repository root
is put on ``sys.path`` first. All logic lives in ``refine_af.evaluation``; these are thin hooks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    import refine_af.evaluation  # noqa: F401
except ImportError:  # source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from refine_af.evaluation.data import DataSettings, load_task
from refine_af.evaluation.metric import score_instance
from refine_af.evaluation.prompts import format_prompt


def load_superni(superni_task: str, **metadata: Any) -> Any:
    """``custom_dataset`` hook: the checked instances of one task as ``{"test": Dataset}``.

    lm-eval passes the task's ``dataset_kwargs`` (``superni_task``) and the run's metadata
    (``--metadata`` JSON, model args, ...) as keyword arguments; only ``superni_data`` and
    ``superni_references`` are read from the metadata.
    """
    import datasets

    docs = load_task(superni_task, DataSettings.from_metadata(metadata))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def doc_to_text(doc: dict[str, Any]) -> str:
    """Zero-shot "definition" prompt (Tk-Instruct / Self-Instruct evaluation)."""
    return format_prompt(doc, num_pos_examples=0)


def doc_to_text_pos2(doc: dict[str, Any]) -> str:
    """Definition + 2 positive examples (Tk-Instruct's other standard setting)."""
    return format_prompt(doc, num_pos_examples=2)


def doc_to_target(doc: dict[str, Any]) -> str:
    """First reference (only shown in logs; scoring uses every reference)."""
    return doc["references"][0]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Official per-instance ROUGE-L and exact match (x100, max over references)."""
    return score_instance(results[0] if results else "", doc["references"])
