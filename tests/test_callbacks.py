"""What the training stages share: the checkpoint a resumed run continues from."""

from __future__ import annotations

import json
from pathlib import Path

from refine_af.callbacks import last_complete_checkpoint


def test_a_checkpoint_a_kill_cut_short_is_passed_over(tmp_path: Path) -> None:
    assert last_complete_checkpoint(tmp_path / "none") is None
    state = json.dumps({"global_step": 2})
    for name, trainer_state in [
        ("checkpoint-2", state),  # complete
        ("checkpoint-10", None),  # killed before trainer_state.json (written last)
        ("checkpoint-3", state[: len(state) // 2]),  # killed while it was written
        ("checkpoint-final", state),  # not a step
    ]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
        if trainer_state is not None:
            (folder / "trainer_state.json").write_text(trainer_state)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # by step, not name
