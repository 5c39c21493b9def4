"""The 175 human-written Self-Instruct seed tasks: from a path, or downloaded once and cached."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from refine_af.errors import UserError
from refine_af.models import cache_dir

SEED_TASKS_ENV = "REFINEAF_SEED_TASKS"
# yizhongw/self-instruct at a pinned commit; the checksum guards against a changed or bad file.
SEED_TASKS_COMMIT = "0b26ccaa415992100fa32df62d41b994cf928e23"
SEED_TASKS_URL = (
    "https://raw.githubusercontent.com/yizhongw/self-instruct/"
    f"{SEED_TASKS_COMMIT}/data/seed_tasks.jsonl"
)
SEED_TASKS_SHA256 = "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48"


@dataclass(frozen=True)
class SeedTask:
    id: str
    instruction: str
    is_classification: bool
    instances: tuple[tuple[str, str], ...]  # (input, output) pairs


def download_seed_tasks(url: str = SEED_TASKS_URL, sha256: str = SEED_TASKS_SHA256) -> Path:
    """Fetch the pinned seed file once into the cache, SHA-256 checked (refine_af.download)."""
    from refine_af.download import fetch

    target = cache_dir() / "self_instruct" / SEED_TASKS_COMMIT / "seed_tasks.jsonl"
    hint = f"pass --seed-tasks PATH or set {SEED_TASKS_ENV} to a local copy of seed_tasks.jsonl"
    return fetch(url, target, sha256, hint)


def seed_tasks_path(configured: str | None) -> Path:
    """The seed file to use: the config/CLI path, else the environment variable, else download."""
    chosen = configured or os.environ.get(SEED_TASKS_ENV)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise UserError(f"seed task file {path} does not exist: give the path to a JSONL file")
        return path
    return download_seed_tasks()


def load_seed_tasks(path: Path) -> list[SeedTask]:
    """Read and validate a Self-Instruct seed file (one JSON object per line)."""
    tasks: list[SeedTask] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                instances = tuple(
                    (str(inst.get("input", "")), str(inst["output"]))
                    for inst in record.get("instances", [])
                )
                tasks.append(
                    SeedTask(
                        id=str(record.get("id", f"seed_task_{number - 1}")),
                        instruction=str(record["instruction"]).strip(),
                        is_classification=bool(record.get("is_classification", False)),
                        instances=instances,
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
                raise UserError(
                    f"seed task file {path} line {number} is malformed ({type(error).__name__}: "
                    f"{error}): each line must be a JSON object with 'instruction' and 'instances'"
                ) from error
    if not tasks:
        raise UserError(f"seed task file {path} has no tasks")
    if any(not task.instruction for task in tasks):
        raise UserError(f"seed task file {path} has a task with an empty instruction")
    return tasks
