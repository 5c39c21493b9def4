"""Decontamination: drop generated data that overlaps the SuperNI test tasks.

The evaluation scores models on SuperNI's 119 test tasks (SPEC section 3). A generated
instruction that paraphrases a test task's definition, or an instance that copies a test input,
would let the fine-tuned model see test material, so stage 3 removes them before fine-tuning.

Overlap is measured on word n-grams (lower-cased ``[a-z0-9]+`` tokens, the tokenization
ROUGE uses): a text of at least ``n`` tokens is contaminated when it shares any ``n``-gram with
the test data (task definitions, instance inputs and outputs, positive examples); a shorter text
is contaminated when it equals a whole test text of at least ``min_tokens`` tokens. Very short
texts ("Yes", "positive") are never compared: they are labels, not leaked test material.

The test data comes from a local file, never the network: ``generate_instances.superni_data``,
else the environment variable ``REFINEAF_SUPERNI_DATA`` (the evaluation reads the same one): a
JSONL / JSONL.GZ with one instance per line (``task_name, definition, positive_examples, input,
outputs``, the layout of ``shared/data/superni_test.jsonl.gz``) or a directory of
natural-instructions task files (``<task>.json``). Without it the step is skipped with a warning
and the data card says so. A partial file (such as the 30 tasks in ``shared/data``) checks only
against the tasks it holds; the summary records how many tasks were covered.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refine_af.errors import UserError
from refine_af.storage import file_digest

SUPERNI_DATA_ENV = "REFINEAF_SUPERNI_DATA"
_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric word tokens (ROUGE's tokenization, without stemming)."""
    return _TOKEN.findall(text.lower())


def _as_list(value: Any) -> list[Any]:
    """Fields stored as a Python-literal string in some JSONL copies (``"[{'input': ...}]"``)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [] if value is None else [value]


def read_superni_texts(path: Path) -> tuple[list[str], set[str]]:
    """Every test text of the SuperNI test tasks a local source holds, and those tasks' names.

    The source is read by the evaluation's own reader (:mod:`refine_af.evaluation.data`), so
    decontamination sees exactly the instances the benchmark scores (the first 100 per task).
    """
    from refine_af.evaluation.data import DataSettings, local_task_rows

    by_task = local_task_rows(DataSettings(data=str(path)))
    if not by_task:
        raise UserError(
            f"SuperNI data {path} holds none of the 119 test tasks: point it at the test tasks "
            "(a JSONL/JSONL.GZ or a directory of natural-instructions task files)"
        )
    texts: list[str] = []
    for rows in by_task.values():
        first = rows[0]
        texts.extend(str(d) for d in _as_list(first.get("definition")))
        for example in _as_list(first.get("positive_examples")):
            if isinstance(example, dict):
                texts.extend([str(example.get("input", "")), str(example.get("output", ""))])
        for row in rows:
            texts.append(str(row.get("input", "")))
            texts.extend(str(o) for o in _as_list(row.get("outputs")))
    return texts, set(by_task)


def find_superni_data(configured: str | None) -> Path | None:
    """The configured path, else ``$REFINEAF_SUPERNI_DATA``, else None (no test data here)."""
    chosen = configured or os.environ.get(SUPERNI_DATA_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.exists():
        # A path the user named but that is missing is a mistake, not "no data": say so.
        raise UserError(
            f"SuperNI data {path} does not exist: fix generate_instances.superni_data or "
            f"{SUPERNI_DATA_ENV}, or set generate_instances.decontaminate=false"
        )
    return path


def file_key(path: Path) -> str:
    """Identity of a data file or directory for fingerprints: the content of what is read.

    Content, not path or modification time: the same data downloaded again or moved elsewhere
    must not make stage 3 start afresh. In a directory only the test tasks' files count (the
    reader opens no other; a natural-instructions checkout holds 1,600 more).
    """
    from refine_af.evaluation.data import TASK_NAMES

    if not path.is_dir():
        return file_digest(path)
    files = [path / f"{name}.json" for name in TASK_NAMES if (path / f"{name}.json").is_file()]
    stamp = "|".join(f"{f.name}:{file_digest(f)}" for f in files)
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


@dataclass
class ContaminationIndex:
    """N-grams and whole short texts of the test data, queried for overlap."""

    n: int = 8
    min_tokens: int = 4
    ngrams: set[tuple[str, ...]] = field(default_factory=set)
    short_texts: set[tuple[str, ...]] = field(default_factory=set)

    def add(self, text: str) -> None:
        words = tokens(text)
        if len(words) >= self.n:
            self.ngrams.update(tuple(words[i : i + self.n]) for i in range(len(words) - self.n + 1))
        elif len(words) >= self.min_tokens:
            self.short_texts.add(tuple(words))

    def add_all(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.add(text)

    def overlaps(self, text: str) -> bool:
        """True when ``text`` shares an n-gram with, or (if short) equals, a test text."""
        words = tokens(text)
        if len(words) >= self.n:
            return any(
                tuple(words[i : i + self.n]) in self.ngrams for i in range(len(words) - self.n + 1)
            )
        # A short text counts only when it is a whole test text: its words inside a longer
        # test text are too common to mean a leak.
        return len(words) >= self.min_tokens and tuple(words) in self.short_texts


@dataclass
class Decontaminator:
    """What stage 3 asks: is this instruction / instance test material? Counts nothing itself."""

    index: ContaminationIndex | None
    source: str | None
    tasks: int = 0
    note: str = ""

    @property
    def available(self) -> bool:
        return self.index is not None

    def instruction(self, text: str) -> bool:
        return self.index is not None and self.index.overlaps(text)

    def instance(self, input_text: str, output_text: str) -> bool:
        if self.index is None:
            return False
        return self.index.overlaps(input_text) or self.index.overlaps(output_text)

    def describe(self) -> dict[str, Any]:
        """For summaries and the data card."""
        return {
            "applied": self.available,
            "source": self.source,
            "test_tasks_covered": self.tasks,
            "ngram": self.index.n if self.index else None,
            "note": self.note,
        }


def build_decontaminator(
    enabled: bool, configured: str | None, n: int = 8, min_tokens: int = 4
) -> Decontaminator:
    """Load the test data into an index, or explain (warning + note) why there is none."""
    if not enabled:
        return Decontaminator(None, None, note="disabled (generate_instances.decontaminate=false)")
    path = find_superni_data(configured)
    if path is None:
        note = (
            "skipped: no SuperNI test data given (set generate_instances.superni_data or "
            f"{SUPERNI_DATA_ENV} to a SuperNI JSONL/JSONL.GZ or task directory)"
        )
        from refine_af.console import note as tell

        tell(f"decontamination {note}")
        return Decontaminator(None, None, note=note)
    texts, tasks = read_superni_texts(path)
    index = ContaminationIndex(n=n, min_tokens=min_tokens)
    index.add_all(texts)
    note = f"checked against {len(tasks)} SuperNI test tasks"
    if len(tasks) < 119:
        note += " (partial data: the other test tasks were not checked)"
    return Decontaminator(index, str(path), tasks=len(tasks), note=note)
