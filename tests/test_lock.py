"""One writer per folder: a second command exits 2 with one line; a dead holder's lock is taken.

The holders here are real processes: a small Python process that takes the lock and sleeps, and
real ``refineaf train`` runs on the tiny model of tests/conftest.py (the sizes of
tests/test_train_resume.py's fine-tuning test).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from refine_af import lock
from refine_af.cli import cli
from refine_af.lock import LOCK_NAME, FolderInUse, hold, read_holder
from tests.test_train_resume import assert_same_adapter, kill_after_checkpoint, train_args

REPO = Path(__file__).resolve().parents[1]
# A process that holds a folder's lock until it is killed.
HOLDER = (
    "import sys, time\n"
    "from refine_af.lock import hold\n"
    "with hold(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)
SFT_ONLY = ("pipeline.variants=[seeds_only]", "sft.max_steps=8", "sft.save_steps=2")


def start_holder(folder: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held", (
        process.stderr.read() if process.stderr else ""
    )
    return process


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    """A folder whose lock another live process holds."""
    folder = tmp_path / "held"
    process = start_holder(folder)
    yield folder, process
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and "Traceback" not in output
    return lines[0]


def wait_for_holder(folder: Path, pid: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while (record := read_holder(folder / LOCK_NAME)) is None or record.pid != pid:
        assert process.poll() is None, "the command ended before it took the lock"
        assert time.monotonic() < deadline, "the command took no lock within 120 s"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# The lock itself.


def test_a_live_holder_is_named_in_one_line(holder: tuple[Path, subprocess.Popen]) -> None:
    folder, process = holder
    record = read_holder(folder / LOCK_NAME)
    assert record is not None and record.pid == process.pid
    assert record.host == socket.gethostname() and record.is_running()
    with pytest.raises(FolderInUse) as caught, hold(folder, "run directory"):
        pass
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"run directory {folder} is in use by PID {process.pid} on host ")
    assert f"since {record.started_at}" in message and f"kill {process.pid}" in message
    assert "run this command again" in message
    assert read_holder(folder / LOCK_NAME) == record  # the refused process changed nothing


def test_the_lock_of_a_killed_process_is_taken_over_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    process = start_holder(folder)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    process.stderr.close()
    stale = read_holder(folder / LOCK_NAME)
    assert stale is not None and stale.pid == process.pid and stale.is_running() is False
    with hold(folder, "run directory"):
        lines = capsys.readouterr().out.splitlines()
        assert lines == [
            f"note: run directory {folder}: took over the lock left by PID {process.pid} on "
            f"host {stale.host} since {stale.started_at}, which is no longer running; "
            "continuing its work"
        ]
        assert read_holder(folder / LOCK_NAME).pid == os.getpid()
    # Released cleanly: the next holder has nothing to take over and says nothing.
    assert read_holder(folder / LOCK_NAME) is None
    with hold(folder, "run directory"):
        assert capsys.readouterr().out == ""


def test_a_half_written_record_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / LOCK_NAME).write_text('{"pid": 12')  # a kill while the record was written
    with hold(tmp_path):
        assert "killed while it took the lock" in capsys.readouterr().out


def test_holds_are_reentrant_within_a_process(tmp_path: Path) -> None:
    with hold(tmp_path), hold(tmp_path / "sub" / ".."):
        assert read_holder(tmp_path / LOCK_NAME).pid == os.getpid()
    assert lock._HOLDS == {} and read_holder(tmp_path / LOCK_NAME) is None


def test_other_ranks_of_a_launch_take_no_lock(
    holder: tuple[Path, subprocess.Popen], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = holder
    monkeypatch.setenv("RANK", "1")  # rank 0 of the same launch writes and holds the lock
    with hold(folder):
        pass


# ---------------------------------------------------------------------------------------------
# Every writing command refuses a held folder before it loads anything.


def test_every_writing_command_refuses_a_held_run_directory(
    holder: tuple[Path, subprocess.Popen], tmp_path: Path
) -> None:
    folder, process = holder
    # The model does not exist: the lock is checked first, before any model is looked for.
    common = [f"run.output_dir={folder}", f"run.model={tmp_path / 'no-such-model'}"]
    for command in (
        ["train"],
        ["generate-instructions"],
        ["rl"],
        ["generate-instances", "--variant", "baseline"],
        ["sft", "--variant", "seeds_only"],
    ):
        result = CliRunner().invoke(cli, [*command, *common])
        assert result.exit_code == 2, (command, result.output)
        line = one_error_line(result.output)
        assert f"run directory {folder} is in use by PID {process.pid}" in line, command
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written


def test_score_and_eval_refuse_a_held_output_folder(
    holder: tuple[Path, subprocess.Popen], tmp_path: Path, tiny_model_dir: Path, shared_data: Path
) -> None:
    folder, process = holder
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "Name a colour.", "output": "Blue."}) + "\n")
    result = CliRunner().invoke(
        cli, ["score", "--input", str(rows), "--output", str(folder / "scored.jsonl")]
    )
    assert result.exit_code == 2, result.output
    assert f"output folder {folder} is in use by PID {process.pid}" in one_error_line(result.output)
    data = shared_data / "superni_test.jsonl.gz"
    if not data.is_file():
        pytest.skip(f"SuperNI test data not found in {shared_data}")
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            f"model={tiny_model_dir}",
            f"data={data}",
            "tasks=[task1345_glue_qqp_question_paraprashing]",
            "rows=[{name: vanilla}]",
            f"output_dir={folder}",
        ],
    )
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert f"eval output directory {folder} is in use by PID {process.pid}" in line
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]


# ---------------------------------------------------------------------------------------------
# Two real `refineaf train` processes on one run directory.


@pytest.fixture(scope="module")
def single_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, seed_tasks_file: Path
) -> Path:
    """The reference: one uninterrupted train, alone on its run directory."""
    run = tmp_path_factory.mktemp("single") / "run"
    result = CliRunner().invoke(cli, train_args(run, tiny_model_dir, seed_tasks_file, *SFT_ONLY))
    assert result.exit_code == 0, result.output
    return run


def assert_same_outputs(got: Path, want: Path) -> None:
    for name in ("instances/seeds_only/instances.jsonl", "instances/seeds_only/summary.json"):
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
    assert_same_adapter(got / "sft/seeds_only/adapter", want / "sft/seeds_only/adapter")
    assert not list(got.rglob("*.replaced-*"))


def test_a_second_train_on_the_same_run_directory_exits_2_and_changes_nothing(
    tmp_path: Path, tiny_model_dir: Path, seed_tasks_file: Path, single_run: Path
) -> None:
    run = tmp_path / "run"
    args = train_args(run, tiny_model_dir, seed_tasks_file, *SFT_ONLY)
    code = "import sys\nfrom refine_af.cli import cli\nsys.exit(cli())"
    first = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_holder(run, first.pid, first)
        started = time.monotonic()
        second = CliRunner().invoke(cli, args)  # the same command, started by mistake
        refused_in = time.monotonic() - started
        still_running = first.poll() is None
        _, errors = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert still_running, "the first train ended before the second started: nothing was tried"
    assert second.exit_code == 2, second.output
    line = one_error_line(second.output)
    assert f"run directory {run} is in use by PID {first.pid} on host" in line
    assert refused_in < 30, "the second command loaded models before it stopped"
    assert first.returncode == 0, errors[-3000:]
    assert_same_outputs(run, single_run)
    # Every stage ran once, in the first process, and status.json says exactly that.
    status = json.loads((run / "status.json").read_text())
    for stage in ("instances:seeds_only", "sft:seeds_only"):
        attempts = status[stage]["attempts"]
        assert [(a["state"], a["pid"]) for a in attempts] == [("done", first.pid)], stage


def test_a_killed_train_leaves_a_lock_the_next_train_takes_over(
    tmp_path: Path, tiny_model_dir: Path, seed_tasks_file: Path, single_run: Path
) -> None:
    run = tmp_path / "run"
    args = train_args(run, tiny_model_dir, seed_tasks_file, *SFT_ONLY)
    kill_after_checkpoint(args, run / "sft" / "seeds_only" / "checkpoints")
    stale = read_holder(run / LOCK_NAME)
    assert stale is not None and stale.is_running() is False
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "took over the lock" in line]
    assert notes == [
        f"note: run directory {run}: took over the lock left by PID {stale.pid} on host "
        f"{stale.host} since {stale.started_at}, which is no longer running; continuing its work"
    ]
    assert_same_outputs(run, single_run)
    attempts = json.loads((run / "status.json").read_text())["sft:seeds_only"]["attempts"]
    assert [(a["state"], a["pid"]) for a in attempts] == [
        ("killed", stale.pid),
        ("done", os.getpid()),
    ]
