"""The one place logs are appended, read back, repaired and written atomically."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from refine_af.storage import (
    CorruptFileError,
    StorageError,
    append_records,
    atomic_directory,
    keep_records,
    read_json,
    read_log,
    read_records,
    write_json_atomic,
    writing,
)


def test_append_then_read_back(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    append_records(log, [{"a": 1}, {"b": "é"}])
    append_records(log, [])
    append_records(log, [{"c": [1, 2]}])
    assert read_log(log) == [{"a": 1}, {"b": "é"}, {"c": [1, 2]}]
    assert read_log(tmp_path / "missing.jsonl") == []


def test_a_torn_last_line_is_cut_off_the_file(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert read_log(log) == [{"a": 1}, {"b": 2}]
    assert log.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    append_records(log, [{"c": 3}])
    assert read_log(log) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_a_corrupt_line_before_the_last_changes_nothing(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    content = b'{"a": 1}\n{"b": 2\n{"c": 3}\n{"d": '
    log.write_bytes(content)
    with pytest.raises(CorruptFileError) as error:
        read_log(log)
    assert str(error.value).startswith(f"{log} line 2 ")
    assert "\n" not in str(error.value)
    assert log.read_bytes() == content  # the intact lines after it are still there


def test_input_files_are_read_strictly(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"a": 1}\n\n{"b": 2}')  # a missing final newline is fine in an input
    assert read_records(data) == [{"a": 1}, {"b": 2}]
    data.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(CorruptFileError, match="line 2 is not a JSON object"):
        read_records(data)
    with pytest.raises(Exception, match="does not exist"):
        read_records(tmp_path / "missing.jsonl")


def test_keep_records_and_json(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    append_records(log, [{"step": i} for i in range(1, 5)])
    keep_records(log, lambda r: r["step"] <= 2)
    assert read_log(log) == [{"step": 1}, {"step": 2}]
    write_json_atomic(tmp_path / "x.json", {"k": [1]})
    assert read_json(tmp_path / "x.json") == {"k": [1]}
    assert read_json(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_atomic_directory_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    with atomic_directory(target) as partial:
        (partial / "weights").write_text("one")
    assert (target / "weights").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_directory(target) as partial:
        (partial / "weights").write_text("two")
        raise RuntimeError("killed while writing")
    assert (target / "weights").read_text() == "one"  # the old folder is untouched
    with atomic_directory(target) as partial:
        (partial / "weights").write_text("three")
    assert (target / "weights").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_failed_write_names_its_file_and_says_the_same_command_resumes(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    with pytest.raises(StorageError) as caught:
        write_json_atomic(gone / "summary.json", {"a": 1})
    assert str(caught.value) == (
        f"cannot write {gone / 'summary.json'}: {gone} is gone (moved or deleted while the "
        "command ran); run the same command again: it resumes from the outputs that are still "
        "there"
    )
    full = rf"^cannot write {tmp_path / 'x.jsonl'}: no space"
    with pytest.raises(StorageError, match=full), writing(tmp_path / "x.jsonl"):
        raise OSError(errno.ENOSPC, "No space left on device")  # write() names no file
    # A full disk while a folder is filled (save_pretrained) names the folder; the old one stays.
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old").write_text("kept")
    full = rf"^cannot write {target}: no space left"
    with pytest.raises(StorageError, match=full), atomic_directory(target) as partial:
        (partial / "weights").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (target / "old").read_text() == "kept"


def test_a_full_disk_inside_a_library_is_one_line_too() -> None:
    from refine_af.cli import disk_full_line

    # safetensors and torch raise their own types, with the system's words in the text.
    line = disk_full_line(RuntimeError("I/O error: No space left on device (os error 28)"))
    assert line is not None and line.startswith("a write failed: no space left on the device")
    assert "run the same command again" in line
    assert disk_full_line(RuntimeError("shape mismatch")) is None
