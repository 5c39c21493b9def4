"""Trainer callbacks the training stages share."""

from __future__ import annotations

from typing import Any

from refine_af.run_dir import StageRecord


def progress_callback(status: StageRecord | None) -> Any:
    """A ``TrainerCallback`` recording progress in ``status.json`` after every optimizer step,
    so a killed run's time is counted up to its last step."""
    from transformers import TrainerCallback

    class RecordProgress(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if status is not None and state.is_world_process_zero:
                status.progress()

    return RecordProgress()
