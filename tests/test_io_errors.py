"""A full disk, a folder deleted mid-run and a damaged status.json, through the real CLI.

Stage 3a (``refineaf generate-instances --variant baseline``) runs on the tiny model of
tests/conftest.py over six seed instructions in three batches. The full disk is an
``OSError(ENOSPC)`` injected where the storage layer flushes the batch log to disk (``os.fsync``),
after half of the batch's line reached the file, as a disk that fills up mid-write leaves it.
Each case must end in one line naming the file and saying that the same command resumes, and
the re-run must end with the bytes of an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from refine_af.cli import cli

COMPARED = ("batches.jsonl", "instances.jsonl", "summary.json")


def prepare(run: Path, seed_tasks: Path, count: int = 6) -> None:
    """Stage 3's input: the first ``count`` seed instructions, as stage 1 writes them."""
    folder = run / "instructions"
    folder.mkdir(parents=True)
    with seed_tasks.open() as handle, (folder / "instructions.jsonl").open("w") as out:
        for number, line in zip(range(count), handle, strict=False):
            task = json.loads(line)
            record = {
                "id": f"gen_{number:06d}",
                "instruction": task["instruction"],
                "is_classification": task.get("is_classification", False),
            }
            out.write(json.dumps(record) + "\n")


def instances_args(run: Path, model: Path) -> list[str]:
    return [
        "generate-instances",
        "--variant",
        "baseline",
        f"run.output_dir={run}",
        f"run.model={model}",
        "run.device=cpu",
        "generate_instances.instructions_per_batch=2",
        "generate_instances.completions_per_instruction=2",
        "generate_instances.max_new_tokens=8",
        "generate_instances.temperature=1.0",
        "generate_instances.output_judge=null",
        "generate_instances.decontaminate=false",
    ]


def invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def error_line(output: str) -> str:
    """The one error line of a failed command (progress bars aside), without a traceback."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


@pytest.fixture(scope="module")
def straight(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, seed_tasks_file: Path
) -> Path:
    """An uninterrupted run: the bytes every interrupted one must end with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    prepare(run, seed_tasks_file)
    code, output = invoke(instances_args(run, tiny_model_dir))
    assert code == 0, output
    return run / "instances" / "baseline"


def assert_same_bytes(got: Path, want: Path) -> None:
    for name in COMPARED:
        assert (got / name).read_bytes() == (want / name).read_bytes(), name


def fsync_hook(
    monkeypatch: pytest.MonkeyPatch, log: Path, on_append: Callable[[int, int], None]
) -> None:
    """Call ``on_append(fd, number)`` before the storage layer flushes append ``number`` (from 1)
    of ``log``; every other fsync is the real one."""
    import refine_af.storage as storage

    real = os.fsync
    appends = [0]

    def fsync(fd: int) -> None:
        if log.is_file() and os.path.samestat(os.fstat(fd), log.stat()):
            appends[0] += 1
            on_append(fd, appends[0])
        real(fd)

    monkeypatch.setattr(storage.os, "fsync", fsync)


def test_a_full_disk_is_one_line_naming_the_file_and_the_rerun_resumes(
    tmp_path: Path,
    tiny_model_dir: Path,
    seed_tasks_file: Path,
    straight: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    prepare(run, seed_tasks_file)
    folder = run / "instances" / "baseline"
    log = folder / "batches.jsonl"

    def disk_fills_up(fd: int, number: int) -> None:
        if number == 2:  # the second batch's line is half on disk when the space runs out
            size = os.fstat(fd).st_size
            last = log.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
            os.ftruncate(fd, size - len(last) // 2 - 1)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        fsync_hook(patch, log, disk_fills_up)
        code, output = invoke(instances_args(run, tiny_model_dir))
    assert code == 2, output
    assert error_line(output) == (
        f"error: cannot write {log}: no space left on the device (or quota); free some space, "
        "then run the same command again: it resumes from the last complete batch or checkpoint"
    )
    assert not log.read_bytes().endswith(b"\n")  # one batch logged, the second torn

    code, output = invoke(instances_args(run, tiny_model_dir))  # space freed
    assert code == 0, output
    assert_same_bytes(folder, straight)
    attempts = json.loads((run / "status.json").read_text())["instances:baseline"]["attempts"]
    assert [a["state"] for a in attempts] == ["failed", "done"]


def test_a_folder_deleted_mid_run_is_one_line_and_the_rerun_redoes_it(
    tmp_path: Path,
    tiny_model_dir: Path,
    seed_tasks_file: Path,
    straight: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    prepare(run, seed_tasks_file)
    folder = run / "instances" / "baseline"
    log = folder / "batches.jsonl"

    def folder_vanishes(fd: int, number: int) -> None:
        if number == 1:  # someone cleans up the folder while the first batch is written
            shutil.rmtree(folder)

    with monkeypatch.context() as patch:
        fsync_hook(patch, log, folder_vanishes)
        code, output = invoke(instances_args(run, tiny_model_dir))
    assert code == 2, output
    line = error_line(output)
    assert line.startswith(f"error: cannot write {folder}/")
    assert f"{folder} is gone (moved or deleted while the command ran)" in line
    assert "run the same command again" in line

    code, output = invoke(instances_args(run, tiny_model_dir))
    assert code == 0, output
    assert_same_bytes(folder, straight)


def test_a_damaged_status_file_is_rebuilt_from_the_folder_keys(
    tmp_path: Path, tiny_model_dir: Path, seed_tasks_file: Path, straight: Path
) -> None:
    run = tmp_path / "run"
    prepare(run, seed_tasks_file)
    assert invoke(instances_args(run, tiny_model_dir))[0] == 0
    status = run / "status.json"
    damaged = status.read_bytes()[: len(status.read_bytes()) // 2]
    status.write_bytes(damaged)  # as a full disk or a bad edit leaves it
    key = (run / "instances" / "baseline" / "key").read_text().strip()

    code, output = invoke(instances_args(run, tiny_model_dir))
    assert code == 0, output
    notes = [line for line in output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith(f"note: {status} is not valid JSON (")
    assert "rebuilt it from the keys of 1 stage folders" in notes[0]
    assert "status.json.replaced-damaged" in notes[0]
    assert (run / "status.json.replaced-damaged").read_bytes() == damaged  # nothing deleted
    entry = json.loads(status.read_text())["instances:baseline"]
    assert entry["key"] == key and entry["state"] == "done"
    assert [a["state"] for a in entry["attempts"]] == ["done"]  # resumed: all batches logged
    assert_same_bytes(run / "instances" / "baseline", straight)
