"""The run directory: resolved config, package versions and each stage's status.

Layout (each stage owns its sub-directory)::

    RUN/config.yaml          resolved config of the latest command that started work here
    RUN/versions.json        python, platform and package versions of that command
    RUN/status.json          per stage: state, key, every attempt's time, summary
    RUN/<stage>/key          the key of the settings and inputs the folder's outputs come from
    RUN/<stage>/...          the stage's outputs

The config is recorded when a stage starts work (after its inputs were checked), not when the
command starts, so after a command that failed on bad input the run directory still describes the
data that is in it.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from refine_af.batches import Output, set_aside
from refine_af.console import note
from refine_af.errors import UserError
from refine_af.lock import hold
from refine_af.storage import CorruptFileError, read_json, write_json_atomic, write_text_atomic

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


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _seconds_between(start: str, end: str) -> float:
    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())


@dataclass
class StageRecord:
    """Handed to a running stage: fill ``summary``; call ``progress()`` after each unit of work
    (a batch, a step), so the time of an attempt that gets killed is not lost."""

    run_dir: RunDirectory
    stage: str
    summary: dict[str, Any] = field(default_factory=dict)

    def progress(self) -> None:
        self.run_dir._touch_attempt(self.stage)


class RunDirectory:
    """One run's folder; stages record their progress here so runs can be resumed and audited."""

    def __init__(
        self, path: str | Path, config: dict[str, Any] | None = None, command: str | None = None
    ) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-check"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise UserError(
                f"cannot write to run directory {self.path} ({reason}): set run.output_dir to a "
                "folder you can write to"
            ) from error
        self._config = config
        self._command = command

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    def record_config(self) -> None:
        """Save the resolved config and package versions of this command (once per command)."""
        if self._config is None:
            return
        from refine_af.config import dump_yaml

        write_text_atomic(self.path / "config.yaml", dump_yaml(self._config, header=self._command))
        write_json_atomic(self.path / "versions.json", package_versions())
        self._config = None

    # -- status ---------------------------------------------------------------------------------

    def read_status(self) -> dict[str, dict[str, Any]]:
        try:
            status = read_json(self.status_file)
        except CorruptFileError as error:
            cause = error.__cause__
            detail = cause.msg if isinstance(cause, json.JSONDecodeError) else str(error)
            return self._rebuild_status(f"is not valid JSON ({detail})")
        if status is not None and not isinstance(status, dict):
            return self._rebuild_status(f"holds a JSON {type(status).__name__}, not an object")
        return status or {}

    def _rebuild_status(self, damage: str) -> dict[str, dict[str, Any]]:
        """A damaged status.json (a disk that filled up, an edit gone wrong) is rebuilt from the
        keys of the stage folders, which decide what each stage resumes; the damaged copy is set
        aside, never deleted. Only the attempt history is lost with it."""
        status: dict[str, dict[str, Any]] = {}
        for key_file in sorted([*self.path.glob("*/key"), *self.path.glob("*/*/key")]):
            folder = key_file.parent.relative_to(self.path)
            if any(".replaced-" in part or part.endswith(".partial") for part in folder.parts):
                continue
            key = key_file.read_text(encoding="utf-8").strip()
            if key:
                status[":".join(folder.parts)] = {
                    "state": "rebuilt",
                    "key": key,
                    "attempts": [],
                    "rebuilt_from": str(folder / "key"),
                }
        aside = set_aside(self.status_file, "damaged")
        write_json_atomic(self.status_file, status)
        note(
            f"{self.status_file} {damage}: rebuilt it from the keys of {len(status)} stage "
            f"folders (the damaged copy is kept as {aside.name}); every stage resumes from what "
            "its folder holds"
        )
        return status

    def stage_status(self, stage: str) -> dict[str, Any]:
        return self.read_status().get(stage, {})

    def _update(self, stage: str, **fields: Any) -> dict[str, Any]:
        status = self.read_status()
        entry = status.setdefault(stage, {})
        entry.update(fields)
        write_json_atomic(self.status_file, status)
        return entry

    def is_done(self, stage: str, key: str, extent: Any = None) -> bool:
        """True when the stage finished with exactly these inputs and settings (``key``) and got
        as far as asked (``extent``: a target count, a step count; None for all-or-nothing)."""
        entry = self.stage_status(stage)
        return (
            entry.get("state") == "done"
            and entry.get("key") == key
            and entry.get("extent") == extent
        )

    def _touch_attempt(self, stage: str) -> None:
        entry = self.stage_status(stage)
        attempts = entry.get("attempts") or []
        if attempts and attempts[-1].get("state") == "running":
            attempts[-1]["last_progress_at"] = _now()
            self._update(stage, attempts=attempts)

    @contextmanager
    def stage(self, stage: str, key: str, extent: Any = None) -> Iterator[StageRecord]:
        """Run a stage: records the config, marks the stage running, then done (with its summary),
        failed or interrupted. Every attempt's time is kept; a killed attempt counts up to its
        last recorded progress.

        The run directory's lock is held throughout (the command's own, taken again), so the
        running attempt found at the start was one whose process is gone: it is marked killed
        only then, never while another process still runs it."""
        with hold(self.path, "run directory"), self._stage(stage, key, extent) as record:
            yield record

    @contextmanager
    def _stage(self, stage: str, key: str, extent: Any) -> Iterator[StageRecord]:
        self.record_config()
        entry = self.stage_status(stage)
        attempts: list[dict[str, Any]] = list(entry.get("attempts") or [])
        if attempts and attempts[-1].get("state") == "running":  # killed: it never finished
            last = attempts[-1]
            end = last.get("last_progress_at") or last["started_at"]
            last.update(
                state="killed", ended_at=end, seconds=_seconds_between(last["started_at"], end)
            )
        # The process and host of each attempt: which attempt a kill ended can be told later.
        attempt = {"key": key, "state": "running", "started_at": _now(), "pid": os.getpid()}
        attempts.append({**attempt, "host": socket.gethostname()})
        self._update(stage, state="running", key=key, extent=extent, attempts=attempts, error=None)
        record = StageRecord(self, stage)
        try:
            yield record
        except KeyboardInterrupt:
            self._finish_after_error(stage, "interrupted", record.summary)
            raise
        except BaseException as error:
            detail = str(error) or type(error).__name__
            if not isinstance(error, UserError):
                detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            self._finish_after_error(stage, "failed", record.summary, error=detail)
            raise
        self._finish(stage, "done", record.summary)

    def _finish_after_error(
        self, stage: str, state: str, summary: dict[str, Any], error: str | None = None
    ) -> None:
        """Record a failed or interrupted attempt if the disk lets us: after a full disk or a
        vanished folder, status.json cannot be written either, and the error that stopped the
        stage (which names its file) is the one to show. The attempt then stays "running" and
        the next run counts it as killed."""
        with suppress(OSError, UserError):
            self._finish(stage, state, summary, error)

    def _finish(
        self, stage: str, state: str, summary: dict[str, Any], error: str | None = None
    ) -> None:
        entry = self.stage_status(stage)
        attempts = entry.get("attempts") or []
        ended = _now()
        if attempts:
            last = attempts[-1]
            last.update(
                state=state, ended_at=ended, seconds=_seconds_between(last["started_at"], ended)
            )
        key = entry.get("key")
        seconds = sum(a.get("seconds", 0.0) for a in attempts if a.get("key") == key)
        self._update(
            stage,
            state=state,
            finished_at=ended,
            seconds=round(seconds, 1),
            attempts=attempts,
            summary=summary,
            error=error,
        )

    # -- output folders -------------------------------------------------------------------------

    def claim(self, folder: Path, key: str, restart: bool, contents: str) -> Path | None:
        """Bind a stage's output folder to the settings and inputs (``key``) that make it.

        The one rule (:mod:`refine_af.batches`): outputs of the same key are kept, so the stage
        continues from its last batch or checkpoint; outputs of another key, or any with
        ``restart``, are set aside under a new name (never deleted) and the stage starts afresh.
        Returns where the old outputs went (None: kept, or there were none).
        """
        return Output(folder).claim(key, restart, contents)

    @staticmethod
    def set_aside(folder: Path, label: str) -> Path:
        """Rename ``folder`` to a free ``<name>.replaced-<label>[-n]`` sibling; return it."""
        return set_aside(folder, label)
