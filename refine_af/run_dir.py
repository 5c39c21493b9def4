"""The run directory: resolved config, package versions and each stage's status.

Layout (each stage owns its sub-directory)::

    RUN/config.yaml          resolved config of the latest invocation
    RUN/versions.json        python, platform and package versions
    RUN/status.json          per stage: state, fingerprint, times, summary
    RUN/<stage>/...          the stage's outputs
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from refine_af.errors import UserError

TRACKED_PACKAGES = (
    "refine_af",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "lm_eval",
    "rouge_score",
    "vllm",
)


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a kill mid-write never leaves a truncated file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(partial, path)


class RunDirectory:
    """One run's folder; stages record their progress here so runs can be resumed and audited."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create run directory {self.path}: {error.strerror}") from error

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    def record_config(self, resolved: dict[str, Any], command: str) -> None:
        """Save the resolved config and package versions of this invocation."""
        from refine_af.config import dump_yaml

        (self.path / "config.yaml").write_text(dump_yaml(resolved, header=command))
        write_json_atomic(self.path / "versions.json", package_versions())

    def stage_dir(self, stage: str) -> Path:
        folder = self.path / stage
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def read_status(self) -> dict[str, dict[str, Any]]:
        if not self.status_file.is_file():
            return {}
        try:
            return json.loads(self.status_file.read_text())
        except json.JSONDecodeError as error:
            raise UserError(
                f"{self.status_file} is corrupt ({error.msg}); delete it to re-run every stage"
            ) from error

    def stage_status(self, stage: str) -> dict[str, Any]:
        return self.read_status().get(stage, {})

    def update_status(self, stage: str, **fields: Any) -> None:
        status = self.read_status()
        status.setdefault(stage, {}).update(fields)
        write_json_atomic(self.status_file, status)

    def is_done(self, stage: str, fingerprint: str) -> bool:
        """True when the stage finished with exactly these inputs and settings."""
        entry = self.stage_status(stage)
        return entry.get("state") == "done" and entry.get("fingerprint") == fingerprint

    @contextmanager
    def stage(self, stage: str, fingerprint: str) -> Iterator[dict[str, Any]]:
        """Run a stage: marks it running, then done (with its summary) or failed/interrupted.

        Yields a dict the stage fills with its summary (counts, paths); it is stored on success.
        """
        summary: dict[str, Any] = {}
        previous = self.stage_status(stage)
        started = time.time()
        self.update_status(
            stage,
            state="running",
            fingerprint=fingerprint,
            started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            previous_seconds=previous.get("seconds", 0.0)
            if previous.get("fingerprint") == fingerprint
            else 0.0,
            error=None,
        )
        try:
            yield summary
        except KeyboardInterrupt:
            self._finish(stage, "interrupted", started, summary)
            raise
        except BaseException as error:
            detail = str(error) or type(error).__name__
            if not isinstance(error, UserError):
                detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            self._finish(stage, "failed", started, summary, error=detail)
            raise
        self._finish(stage, "done", started, summary)

    def _finish(
        self,
        stage: str,
        state: str,
        started: float,
        summary: dict[str, Any],
        error: str | None = None,
    ) -> None:
        entry = self.stage_status(stage)
        seconds = entry.get("previous_seconds", 0.0) + (time.time() - started)
        self.update_status(
            stage,
            state=state,
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            seconds=round(seconds, 1),
            summary=summary,
            error=error,
        )


def claim_output_folder(folder: Path, key: str, restart: bool, contents: str) -> None:
    """Bind a stage's append-only output folder to the settings (``key``) that made it.

    A folder made with another key is never extended (that would mix two pools): without
    ``restart`` this raises a one-line error; with it the old folder is set aside under a new
    name, never deleted, and the stage starts afresh.
    """
    key_file = folder / "generation_fingerprint"
    log = folder / "batches.jsonl"
    old_key = key_file.read_text().strip() if key_file.is_file() else key
    if log.is_file() and old_key != key:
        if not restart:
            raise UserError(
                f"{folder} holds {contents} made with other inputs or settings: use another "
                "run.output_dir, or pass --restart to set them aside and start again"
            )
        aside = folder.with_name(f"{folder.name}.replaced-{old_key}")
        number = 1
        while aside.exists():
            number += 1
            aside = folder.with_name(f"{folder.name}.replaced-{old_key}-{number}")
        folder.rename(aside)
        folder.mkdir(parents=True)
    key_file.write_text(key + "\n")
