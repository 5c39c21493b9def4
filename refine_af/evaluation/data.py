"""SuperNI test data: local files or the official task files, checked against official ids.

Where instances come from, in order of preference:

1. a local path given as lm-eval metadata ``superni_data`` (``--metadata '{"superni_data": ...}'``)
   or the environment variable ``REFINEAF_SUPERNI_DATA``: a directory of SuperNI task JSON files
   (``<task>.json``, the natural-instructions format) or a JSONL / JSONL.GZ file with one
   instance per line (``task_name, id, definition, categories, positive_examples, input,
   outputs``; the layout of ``shared/data/superni_test.jsonl.gz``);
2. else the official task file ``tasks/<task>.json`` from allenai/natural-instructions at a
   pinned commit, downloaded once into ``refine_af.models.cache_dir()/superni``; the first 100
   ``Instances`` are the evaluation set (like ``create_reference_file.py`` and Tk-Instruct).

Whatever the source, the instance ids of each task must equal, in order, those of the official
reference file; a task that is absent, truncated or has other ids raises a one-line
:class:`~refine_af.errors.UserError` instead of being scored on a partial set. The reference
file is found the same way (metadata ``superni_references`` / ``REFINEAF_SUPERNI_REFERENCES``,
else a ``superni_test_references.jsonl`` or ``test_references.jsonl`` beside the data, else a
pinned download checked by SHA-256). Gold answers for scoring come from the reference file.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from refine_af.errors import UserError
from refine_af.evaluation.superni_tasks import TEST_TASKS

NI_REPO_URL = "https://raw.githubusercontent.com/allenai/natural-instructions"
NI_COMMIT = "e0fd31052b21acea5bd95fb00253e1ee1f5d8259"
# The official default-track reference file (create_reference_file.py output), as kept in
# thu-coai/PICL; the SHA-256 guards the download.
REFERENCES_URL = (
    "https://raw.githubusercontent.com/thu-coai/PICL/"
    "df926dd6038313ab901426002d59f3b1e5619554/test_references.jsonl"
)
REFERENCES_SHA256 = "9b04c67ef20dc791fb3ff61e2212f46f9573095a64f9c8cd2ed87eed1198f159"
MAX_INSTANCES = 100  # SuperNI evaluates Instances[:100] of every test task
REFERENCE_FILE_NAMES = ("superni_test_references.jsonl", "test_references.jsonl")

ENV_DATA = "REFINEAF_SUPERNI_DATA"
ENV_REFERENCES = "REFINEAF_SUPERNI_REFERENCES"
# Overrides of the download locations: for mirrors, and for tests (a local server or file://).
ENV_BASE_URL = "REFINEAF_SUPERNI_BASE_URL"
ENV_REFERENCES_URL = "REFINEAF_SUPERNI_REFERENCES_URL"

TASK_NAMES: tuple[str, ...] = tuple(name for name, _, _ in TEST_TASKS)
TASK_CATEGORY: dict[str, str] = {name: category for name, category, _ in TEST_TASKS}


@dataclass(frozen=True)
class Reference:
    """One official evaluation instance: its id and gold answers."""

    id: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class DataSettings:
    """Where to read instances and references from (None: the default chain above)."""

    data: str | None = None
    references: str | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None = None) -> DataSettings:
        """Settings from lm-eval metadata keys, falling back to the environment variables."""
        metadata = metadata or {}
        data = metadata.get("superni_data") or os.environ.get(ENV_DATA) or None
        refs = metadata.get("superni_references") or os.environ.get(ENV_REFERENCES) or None
        return cls(data=str(data) if data else None, references=str(refs) if refs else None)

    def describe(self) -> str:
        return self.data if self.data else f"natural-instructions@{NI_COMMIT[:10]} (download)"


# ---------------------------------------------------------------------------------------------
# Downloads (refine_af.download; tests point the URLs at a local server or file://).


def superni_cache_dir() -> Path:
    from refine_af.models import cache_dir

    return cache_dir() / "superni"


DATA_HINT = (
    f"give local SuperNI data with {ENV_DATA} (eval config: data) or "
    "--metadata '{\"superni_data\": PATH}'"
)
REFERENCES_HINT = (
    f"put superni_test_references.jsonl beside the data, or set {ENV_REFERENCES} "
    "(eval config: references; lm_eval: --metadata '{\"superni_references\": PATH}')"
)


def download(url: str, target: Path, sha256: str | None = None, hint: str = DATA_HINT) -> Path:
    """Fetch ``url`` to ``target`` once (refine_af.download: SHA-256 checked when given, atomic).

    ``hint`` ends the error line when the download fails: it names the setting that makes the
    download unnecessary.
    """
    from refine_af.download import fetch

    return fetch(url, target, sha256, hint)


def task_file_url(task: str) -> str:
    base = os.environ.get(ENV_BASE_URL, NI_REPO_URL).rstrip("/")
    return f"{base}/{NI_COMMIT}/tasks/{task}.json"


def downloaded_task_file(task: str) -> Path:
    """The official task JSON at the pinned commit, from the cache or downloaded once."""
    target = superni_cache_dir() / NI_COMMIT / "tasks" / f"{task}.json"
    return download(task_file_url(task), target)


# ---------------------------------------------------------------------------------------------
# References.


def _find_reference_file(settings: DataSettings) -> Path:
    if settings.references:
        path = Path(settings.references).expanduser()
        if not path.is_file():
            raise UserError(
                f"SuperNI reference file {path} does not exist: fix {ENV_REFERENCES} (eval "
                "config: references), or unset both to use the file beside the data or the "
                "pinned download"
            )
        return path
    if settings.data:
        data = Path(settings.data).expanduser()
        folder = data if data.is_dir() else data.parent
        for name in REFERENCE_FILE_NAMES:
            if (folder / name).is_file():
                return folder / name
    url = os.environ.get(ENV_REFERENCES_URL, REFERENCES_URL)
    return download(
        url,
        superni_cache_dir() / "test_references.jsonl",
        sha256=REFERENCES_SHA256,
        hint=REFERENCES_HINT,
    )


@lru_cache(maxsize=4)
def _read_references(path: str, mtime_ns: int) -> dict[str, tuple[Reference, ...]]:
    by_task: dict[str, list[Reference]] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    ref = Reference(row["id"], tuple(row["references"]))
                    by_task.setdefault(row["task_id"], []).append(ref)
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise UserError(
                        f"{path} line {number} is not an official reference line "
                        "({id, references, task_id, ...})"
                    ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the SuperNI reference file {path} ({error})") from error
    return {task: tuple(refs) for task, refs in by_task.items()}


def load_references(settings: DataSettings | None = None) -> dict[str, tuple[Reference, ...]]:
    """Official ids and references of every test task, by task name."""
    path = _find_reference_file(settings or DataSettings())
    return _read_references(str(path), path.stat().st_mtime_ns)


# ---------------------------------------------------------------------------------------------
# Instances.


def _open_text(path: Path) -> Any:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


@lru_cache(maxsize=4)
def _read_jsonl(path: str, mtime_ns: int) -> dict[str, tuple[dict[str, Any], ...]]:
    """A JSONL(.gz) of instances, grouped by task (cached: lm-eval asks once per task)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    number = 0
    try:
        with _open_text(Path(path)) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    by_task.setdefault(row["task_name"], []).append(row)
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise UserError(
                        f"{path} line {number} is not a SuperNI instance line (needs task_name, "
                        "id, definition, categories, positive_examples, input, outputs)"
                    ) from error
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as error:
        # A cut-off .gz raises EOFError, which click would report as "Aborted!"; a damaged one
        # raises BadGzipFile (an OSError) or zlib.error.
        raise UserError(
            f"{path} is damaged or cut short after line {number} ({error}): copy or download "
            "it again"
        ) from error
    return {task: tuple(rows) for task, rows in by_task.items()}


def _rows_from_task_json(task: str, path: Path) -> list[dict[str, Any]]:
    """Instances[:100] of a natural-instructions task file, in the JSONL row layout."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        definition = content["Definition"]
        definition = definition[0] if isinstance(definition, list) else definition
        positives = [
            {"input": ex["input"], "output": ex["output"], "explanation": ex.get("explanation", "")}
            for ex in content.get("Positive Examples", [])
        ]
        categories = list(content.get("Categories", []))
        instances = content["Instances"][:MAX_INSTANCES]
        return [
            {
                "task_name": task,
                "id": inst["id"],
                "definition": definition,
                "categories": categories,
                "positive_examples": positives,
                "input": inst["input"],
                "outputs": list(inst["output"]),
            }
            for inst in instances
        ]
    except (json.JSONDecodeError, KeyError, TypeError, IndexError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a valid SuperNI task file ({error!r})") from error


def available_tasks(settings: DataSettings) -> list[str] | None:
    """Test tasks a local source has (official order), or None for the download source."""
    if not settings.data:
        return None
    path = Path(settings.data).expanduser()
    if path.is_dir():
        return [t for t in TASK_NAMES if (path / f"{t}.json").is_file()]
    if path.is_file():
        have = _read_jsonl(str(path), path.stat().st_mtime_ns)
        return [t for t in TASK_NAMES if t in have]
    raise UserError(
        f"SuperNI data path {path} does not exist: give a directory of task JSON files or a "
        f"JSONL(.gz) file (set {ENV_DATA} or --metadata superni_data)"
    )


def _raw_rows(task: str, settings: DataSettings) -> list[dict[str, Any]]:
    if not settings.data:
        return _rows_from_task_json(task, downloaded_task_file(task))
    path = Path(settings.data).expanduser()
    have = available_tasks(settings) or []
    if task not in have:
        raise UserError(
            f"SuperNI data at {path} has no task {task} (it has {len(have)} of the "
            f"{len(TASK_NAMES)} test tasks): evaluate only those, or point {ENV_DATA} at "
            "complete data, or unset it to download the official files"
        )
    if path.is_dir():
        return _rows_from_task_json(task, path / f"{task}.json")
    return [dict(row) for row in _read_jsonl(str(path), path.stat().st_mtime_ns)[task]]


def local_task_rows(settings: DataSettings) -> dict[str, list[dict[str, Any]]]:
    """Every test task a local source holds, with its rows (what decontamination checks)."""
    return {task: _raw_rows(task, settings) for task in available_tasks(settings) or []}


def check_ids(task: str, rows: list[dict[str, Any]], official: tuple[Reference, ...]) -> None:
    """Raise unless the rows' ids are exactly the official ids of ``task``, in order."""
    got = [row["id"] for row in rows]
    want = [ref.id for ref in official]
    if got == want:
        return
    if len(got) < len(want) and got == want[: len(got)]:
        raise UserError(
            f"SuperNI task {task} is truncated: {len(got)} of its {len(want)} official "
            f"instances (first missing id {want[len(got)]})"
        )
    for index, (have, expected) in enumerate(zip(got, want, strict=False)):
        if have != expected:
            raise UserError(
                f"SuperNI task {task}: instance #{index} has id {have}, the official reference "
                f"list has {expected}: the data is not the official test split"
            )
    raise UserError(
        f"SuperNI task {task} has {len(got)} instances, the official reference list "
        f"{len(want)}: the data is not the official test split"
    )


def load_task(task: str, settings: DataSettings | None = None) -> list[dict[str, Any]]:
    """The checked evaluation instances of one test task, as lm-eval docs.

    Each doc has ``id, task_name, category, definition, positive_examples, input, references``
    (the official gold answers).
    """
    if task not in TASK_CATEGORY:
        raise UserError(f"{task} is not one of the {len(TASK_NAMES)} SuperNI test tasks")
    settings = settings or DataSettings.from_metadata()
    official = load_references(settings).get(task)
    if official is None:
        raise UserError(f"the SuperNI reference file has no task {task}: is it the official one?")
    rows = _raw_rows(task, settings)
    check_ids(task, rows, official)
    return [
        {
            "id": row["id"],
            "task_name": task,
            "category": TASK_CATEGORY[task],
            "definition": row["definition"],
            "positive_examples": [
                {"input": ex["input"], "output": ex["output"]}
                for ex in row.get("positive_examples") or []
            ],
            "input": row["input"],
            "references": list(ref.references),
        }
        for row, ref in zip(rows, official, strict=True)
    ]


def check_tasks_available(tasks: Iterable[str], settings: DataSettings) -> None:
    """Fail early, naming every requested task the local source lacks (one line)."""
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in TASK_CATEGORY]
    if unknown:
        raise UserError(
            f"not SuperNI test tasks: {', '.join(unknown)} (see refine_af.evaluation."
            "superni_tasks.TEST_TASKS for the 119 names)"
        )
    have = available_tasks(settings)
    if have is None:
        return  # download source: every official task can be fetched
    missing = [t for t in tasks if t not in set(have)]
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        shown = ", ".join(missing[:8]) + more
        raise UserError(
            f"{len(missing)} of the {len(tasks)} requested SuperNI tasks have no data in "
            f"{settings.data}: {shown}; drop them from the task list or give complete data"
        )
