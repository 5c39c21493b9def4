"""Trainer callbacks the training stages share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refine_af.run_dir import StageRecord


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` in ``folder`` that a kill did not cut short, or None.

    The trainer writes a checkpoint's files one after another (weights, optimizer, scheduler,
    RNG) and ``trainer_state.json`` last, with a plain write. A kill while it writes leaves a
    folder without that file or with half of it; resuming there would load new weights with no
    optimizer or RNG state (or fail on the JSON), and the run would no longer end where an
    uninterrupted one does. Such a folder is passed over; the one before it is complete.
    """
    complete = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = path.name.removeprefix("checkpoint-")
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if step.isdigit() and isinstance(state, dict):
            complete.append((int(step), path))
    return max(complete)[1] if complete else None


def progress_callback(status: StageRecord | None) -> Any:
    """A ``TrainerCallback`` run after every optimizer step: it records progress in
    ``status.json`` (a killed run's time is counted up to its last step) and returns the step's
    freed heap to the system (the resident size would otherwise creep up step by step)."""
    from transformers import TrainerCallback

    from refine_af.models import trim_heap

    class RecordProgress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            trim_heap()
            if status is not None and state.is_world_process_zero:
                status.progress()

    return RecordProgress()


def step_progress(description: str, shown: dict[str, str]) -> Any:
    """A ``TrainerCallback`` with one progress bar over the optimizer steps, showing a few logged
    metrics (``shown`` maps log keys to short names) instead of a printed dict per log."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.is_world_process_zero:
                self.bar = tqdm(
                    total=state.max_steps, initial=state.global_step, desc=description, unit="step"
                )

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if self.bar is not None and logs:
                values = {name: logs[key] for key, name in shown.items() if key in logs}
                if values:  # the end-of-training summary log carries none of them
                    self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return StepProgress()


def use_step_progress(trainer: Any, description: str, shown: dict[str, str]) -> None:
    """Replace the trainer's own bar and printed log dicts with :func:`step_progress` (unless the
    libraries are allowed to speak: ``refineaf --verbose``)."""
    import os

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if os.environ.get("REFINEAF_VERBOSE") == "1":
        return
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(step_progress(description, shown))
