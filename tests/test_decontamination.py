"""Decontamination against SuperNI test data: n-gram overlap, short texts, sources."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from refine_af.decontamination import (
    SUPERNI_DATA_ENV,
    ContaminationIndex,
    build_decontaminator,
    file_key,
    read_superni_texts,
)
from refine_af.errors import UserError

# A real test task's name (the texts are made up): only the 119 test tasks are test data.
TASK = "task670_ambigqa_question_generation"
DEFINITION = "In this task, you are given a question about a movie and must answer it briefly."
TEST_INPUT = "Who directed the movie about the shark that terrorised a small beach town?"


def write_jsonl_gz(path: Path) -> Path:
    row = {
        "task_name": TASK,
        "id": "task999-1",
        "definition": DEFINITION,
        "positive_examples": str([{"input": "Who played Rocky?", "output": "Sylvester Stallone"}]),
        "input": TEST_INPUT,
        "outputs": str(["Steven Spielberg"]),
    }
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    return path


def write_empty(folder: Path) -> Path:
    folder.mkdir()
    (folder / "task001_quoref_question_generation.json").write_text("{}")
    return folder


def test_ngram_overlap_and_short_texts() -> None:
    index = ContaminationIndex(n=5, min_tokens=3)
    index.add_all([DEFINITION, "the cat sat down", "Yes"])
    assert index.overlaps("Here: you are given a question about a movie, answer it.")
    assert not index.overlaps("Write a short poem about a rainy afternoon in the city.")
    assert index.overlaps("The cat sat down.")  # a whole short test text
    assert not index.overlaps("yes")  # labels are never leaks


def test_reads_shared_layout_and_task_directories(tmp_path: Path) -> None:
    texts, tasks = read_superni_texts(write_jsonl_gz(tmp_path / "data.jsonl.gz"))
    assert tasks == {TASK}
    assert DEFINITION in texts and TEST_INPUT in texts and "Sylvester Stallone" in texts
    folder = tmp_path / "tasks"
    folder.mkdir()
    task = {
        "Definition": [DEFINITION],
        "Positive Examples": [{"input": "a", "output": "b"}],
        "Instances": [{"id": "x", "input": TEST_INPUT, "output": ["Steven Spielberg"]}],
    }
    (folder / f"{TASK}.json").write_text(json.dumps(task))
    # A training task of natural-instructions in the same folder is not test data.
    (folder / "task001_quoref_question_generation.json").write_text(json.dumps(task))
    texts, tasks = read_superni_texts(folder)
    assert tasks == {TASK} and TEST_INPUT in texts
    with pytest.raises(UserError, match="holds none of the 119 test tasks"):
        read_superni_texts(write_empty(tmp_path / "other"))


def test_data_identity_is_its_content(tmp_path: Path) -> None:
    """The same data downloaded again (new mtime) or moved keeps stage 3's key; new content not."""
    import os
    import shutil

    original = write_jsonl_gz(tmp_path / "data.jsonl.gz")
    moved = tmp_path / "elsewhere" / "superni.jsonl.gz"
    moved.parent.mkdir()
    shutil.copy(original, moved)
    os.utime(moved, (1, 1))
    assert file_key(moved) == file_key(original)
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / f"{TASK}.json").write_text('{"Definition": ["a"]}')
    before = file_key(folder)
    (folder / f"{TASK}.json").write_text('{"Definition": ["b"]}')
    assert file_key(folder) != before
    with gzip.open(moved, "at", encoding="utf-8") as handle:
        handle.write("\n")
    assert file_key(moved) != file_key(original)


def test_decontaminator_checks_instructions_and_instances(tmp_path: Path) -> None:
    checker = build_decontaminator(True, str(write_jsonl_gz(tmp_path / "d.jsonl.gz")), n=6)
    assert checker.available and checker.describe()["test_tasks_covered"] == 1
    assert checker.instruction("You are given a question about a movie and must answer it.")
    assert not checker.instruction("Sort the list of numbers in ascending order.")
    assert checker.instance(TEST_INPUT, "Spielberg")
    assert not checker.instance("Who wrote Hamlet?", "William Shakespeare")


def test_missing_data_says_so_and_skips(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(SUPERNI_DATA_ENV, raising=False)
    checker = build_decontaminator(True, None)
    assert capsys.readouterr().out.startswith("note: decontamination skipped")
    assert not checker.available and "skipped" in checker.describe()["note"]
    assert not checker.instance(TEST_INPUT, "x")
    assert not build_decontaminator(False, None).available
    with pytest.raises(UserError, match="does not exist"):
        build_decontaminator(True, "/nonexistent/superni.jsonl")


def test_env_variable_and_shared_file(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SUPERNI_DATA_ENV, str(shared_data / "superni_test.jsonl.gz"))
    checker = build_decontaminator(True, None)
    assert checker.describe()["test_tasks_covered"] == 30
    assert checker.instance("When did the simpsons first air on television?", "1989")
