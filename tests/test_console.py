"""The console shows the project's own lines; library chatter only with --verbose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHATTER = (
    "FutureWarning",
    "UserWarning",
    "pin_memory",
    "Adding EOS",
    "Tokenizing",
    "Loading weights",
)


def sft(run: Path, model: Path, *flags: str) -> str:
    command = [
        sys.executable, "-c", "from refine_af.cli import cli; cli()", *flags, "sft",
        f"run.output_dir={run}", f"run.model={model}", "run.device=cpu", "sft.max_steps=1",
        "sft.per_device_train_batch_size=2", "sft.max_length=64",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_library_chatter_only_with_verbose(
    tmp_path: Path, tiny_model_dir: Path, verbose: bool
) -> None:
    run = tmp_path / "run"
    folder = run / "instances" / "refine_af"
    folder.mkdir(parents=True)
    rows = [{"instruction": f"Repeat the word {w}.", "input": w, "output": w * 2} for w in "abcd"]
    (folder / "instances.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = sft(run, tiny_model_dir, *(["--verbose"] if verbose else []))
    assert "adapter trained 1 steps" in output
    found = [word for word in CHATTER if word in output]
    if verbose:
        assert found  # the libraries' own notices are all still there
    else:
        assert not found, output[-2000:]
