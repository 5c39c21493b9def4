"""The run directory: status with every attempt's time, set-aside folders, writability."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from refine_af.errors import UserError
from refine_af.run_dir import RunDirectory


def test_every_attempt_counts_a_killed_one_up_to_its_last_progress(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path)
    with pytest.raises(KeyboardInterrupt), run_dir.stage("s", "k1", 10) as status:
        status.progress()
        raise KeyboardInterrupt
    # A kill (SIGKILL: no chance to write a finish): the attempt stays "running".
    status_file = tmp_path / "status.json"
    data = json.loads(status_file.read_text())
    data["s"]["attempts"].append(
        {
            "key": "k1",
            "state": "running",
            "started_at": "2026-01-01T10:00:00+00:00",
            "last_progress_at": "2026-01-01T10:01:40+00:00",
        }
    )
    data["s"]["state"] = "running"
    status_file.write_text(json.dumps(data))
    with run_dir.stage("s", "k1", 10) as status:
        status.summary["kept"] = 3
    entry = run_dir.stage_status("s")
    states = [a["state"] for a in entry["attempts"]]
    assert states == ["interrupted", "killed", "done"]
    assert entry["attempts"][1]["seconds"] == 100.0
    assert entry["seconds"] >= 100.0  # the killed attempt's time is not lost
    assert entry["summary"] == {"kept": 3} and run_dir.is_done("s", "k1", 10)
    assert not run_dir.is_done("s", "k1", 20) and not run_dir.is_done("s", "k2", 10)


def test_config_is_recorded_when_work_starts(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path, {"run": {"seed": 1}}, "refineaf x")
    assert not (tmp_path / "config.yaml").exists()  # nothing written before a stage starts
    with run_dir.stage("s", "k"):
        pass
    assert (tmp_path / "config.yaml").read_text().startswith("# refineaf x\n")
    assert "transformers" in json.loads((tmp_path / "versions.json").read_text())


def test_set_aside_never_deletes_an_earlier_copy(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path)
    folder = tmp_path / "stage"
    for number, key in enumerate(["a", "b", "c", "b", "c"]):
        run_dir.claim(folder, key, restart=False, contents="outputs")
        (folder / "log").write_text(str(number))
    asides = sorted(p.name for p in tmp_path.glob("stage.replaced-*"))
    assert asides == [
        "stage.replaced-a",
        "stage.replaced-b",
        "stage.replaced-b-2",
        "stage.replaced-c",
    ]
    assert sorted((tmp_path / name / "log").read_text() for name in asides) == ["0", "1", "2", "3"]


def test_one_rule_same_key_continues_other_key_or_restart_sets_aside(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path)
    folder = tmp_path / "stage"
    assert run_dir.claim(folder, "k", restart=False, contents="outputs") is None
    (folder / "batches.jsonl").write_text("{}\n")
    # Same key: kept as it is (the stage continues from it).
    assert run_dir.claim(folder, "k", restart=False, contents="outputs") is None
    assert (folder / "batches.jsonl").is_file()
    # --restart on the same key: set aside, the folder starts empty with the key.
    aside = run_dir.claim(folder, "k", restart=True, contents="outputs")
    assert aside == tmp_path / "stage.replaced-k" and (aside / "batches.jsonl").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["key"]
    (folder / "batches.jsonl").write_text("{}\n")
    # Another key: set aside without being asked.
    aside = run_dir.claim(folder, "other", restart=False, contents="outputs")
    assert aside == tmp_path / "stage.replaced-k-2"
    assert (folder / "key").read_text() == "other\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_unwritable_run_directory_is_one_line() -> None:
    with pytest.raises(UserError) as error:
        RunDirectory("/proc/sys")
    assert "cannot write to run directory /proc/sys" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_damaged_status_is_rebuilt_from_the_stage_folder_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder, key in [("instructions", "k1"), ("sft/baseline", "k2"), ("rl.replaced-k0", "k0")]:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "key").write_text(f"{key}\n")
    (tmp_path / "status.json").write_text("[1, 2]\n")  # valid JSON, not a status
    run_dir = RunDirectory(tmp_path)
    status = run_dir.read_status()
    assert {name: entry["key"] for name, entry in status.items()} == {
        "instructions": "k1",
        "sft:baseline": "k2",  # a set-aside folder is no stage's
    }
    assert all(entry["state"] == "rebuilt" for entry in status.values())
    assert not run_dir.is_done("instructions", "k1")  # each stage checks its outputs again
    assert (tmp_path / "status.json.replaced-damaged").read_text() == "[1, 2]\n"
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"note: {tmp_path / 'status.json'} holds a JSON list, not an object")
    assert json.loads((tmp_path / "status.json").read_text()) == status
    assert run_dir.read_status() == status and capsys.readouterr().out == ""  # once
