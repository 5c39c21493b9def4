"""Bad input: one clear line on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from refine_af.cli import cli


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["--seed-tasks", str(d / "missing.jsonl")], "does not exist"),
        (lambda d: ["--seed-tasks", str(d / "bad.jsonl")], "line 2 is malformed"),
        (lambda d: ["generate_instructions.colour=red"], "unknown config key"),
        (lambda d: ["--num-instructions", "-1"], "num_instructions must be >= 0"),
        (lambda d: ["run.model=" + str(d / "no-such-model")], "does not exist"),
        (lambda d: ["run.model=" + str(d / "missing.gguf")], "does not exist"),
        (lambda d: ["-c", "nosuchconfig"], "not found"),
    ],
)
def test_bad_input_gives_one_line(
    tmp_path: Path, seed_tasks_file: Path, make_args, message
) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok", "instances": []}\n{"instances": [}\n')
    args = make_args(tmp_path)
    if "--seed-tasks" not in args:
        args = ["--seed-tasks", str(seed_tasks_file), *args]
    code, output = invoke("generate-instructions", *args, f"run.output_dir={tmp_path / 'run'}")
    assert code == 2
    assert output.startswith("error: ") and message in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
