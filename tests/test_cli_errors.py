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


def test_a_failed_command_leaves_the_run_directory_as_it_was(
    tmp_path: Path, seed_tasks_file: Path, tiny_model_dir: Path
) -> None:
    run = tmp_path / "run"
    common = [f"run.output_dir={run}", f"run.model={tiny_model_dir}"]
    code, output = invoke(
        "generate-instructions", "--seed-tasks", str(seed_tasks_file), "--num-instructions", "0",
        *common,
    )  # fmt: skip
    assert code == 0, output
    recorded = (run / "config.yaml").read_text()
    status = (run / "status.json").read_text()
    code, output = invoke(
        "generate-instructions", "--seed-tasks", str(tmp_path / "missing.jsonl"), *common
    )
    assert code == 2 and "does not exist" in output
    assert (run / "config.yaml").read_text() == recorded  # still describes the data there
    assert (run / "status.json").read_text() == status


def test_a_corrupt_line_in_a_log_stops_with_its_number_and_changes_nothing(
    tmp_path: Path, seed_tasks_file: Path, tiny_model_dir: Path
) -> None:
    run = tmp_path / "run"
    (run / "instructions").mkdir(parents=True)
    common = [f"run.output_dir={run}", f"run.model={tiny_model_dir}"]
    code, output = invoke(
        "generate-instructions", "--seed-tasks", str(seed_tasks_file), "--num-instructions", "0",
        *common,
    )  # fmt: skip
    assert code == 0, output
    log = run / "instructions" / "batches.jsonl"
    content = (
        b'{"batch": 0, "candidates": []}\n{"batch": 1, "cand\n{"batch": 2, "candidates": []}\n'
    )
    log.write_bytes(content)
    code, output = invoke(
        "generate-instructions", "--seed-tasks", str(seed_tasks_file), "--num-instructions", "5",
        *common,
    )  # fmt: skip
    assert code == 2, output
    assert output.startswith(f"error: {log} line 2 is not a JSON object")
    assert len(output.strip().splitlines()) == 1
    assert log.read_bytes() == content


def test_an_unwritable_output_directory_is_one_line(seed_tasks_file: Path) -> None:
    code, output = invoke(
        "generate-instructions", "--seed-tasks", str(seed_tasks_file), "run.output_dir=/proc/sys"
    )
    assert code == 2
    assert output.startswith("error: cannot write to run directory /proc/sys")
    assert len(output.strip().splitlines()) == 1
