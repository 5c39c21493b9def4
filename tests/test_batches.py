"""The one resume rule on folders and files, and the one batch driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from refine_af.batches import Output, run_batches
from refine_af.storage import CorruptFileError, read_log


def test_a_file_output_follows_the_rule_with_its_key_beside_it(tmp_path: Path) -> None:
    scores = Output(tmp_path / "out" / "scores.jsonl", is_folder=False)
    assert scores.claim("k1", restart=False) is None
    assert (tmp_path / "out" / "scores.jsonl.key").read_text() == "k1\n"
    scores.path.write_text('{"a": 1}\n')
    assert scores.claim("k1", restart=False) is None and scores.path.is_file()  # continued
    aside = scores.claim("k2", restart=False)  # another key: set aside with its key file
    assert aside == tmp_path / "out" / "scores.jsonl.replaced-k1"
    assert aside.read_text() == '{"a": 1}\n'
    assert (tmp_path / "out" / "scores.jsonl.replaced-k1.key").read_text() == "k1\n"
    assert not scores.path.exists() and scores.stored_key() == "k2"
    scores.path.write_text('{"b": 2}\n')
    aside = scores.claim("k2", restart=True)  # --restart: set aside whatever the key
    assert aside == tmp_path / "out" / "scores.jsonl.replaced-k2"
    assert scores.stored_key() == "k2" and not scores.path.exists()


def test_outputs_without_a_key_file_are_set_aside(tmp_path: Path) -> None:
    """Outputs nobody can vouch for (an older layout, a file put there by hand) are never
    extended."""
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "batches.jsonl").write_text("{}\n")
    aside = Output(folder).claim("k", restart=False)
    assert aside == tmp_path / "stage.replaced-unknown"
    assert sorted(p.name for p in folder.iterdir()) == ["key"]


def test_run_batches_continues_a_log_and_cuts_a_torn_line(tmp_path: Path) -> None:
    log = tmp_path / "batches.jsonl"
    seen: list[int] = []
    state = {"killed": False}

    def next_batch(records: list[dict]) -> list[dict] | None:
        if len(records) >= 5:
            return None
        if len(records) == 3 and not state["killed"]:
            state["killed"] = True
            raise KeyboardInterrupt  # killed while making the fourth batch
        return [{"batch": len(records)}]

    with pytest.raises(KeyboardInterrupt):
        run_batches(log, next_batch)
    with log.open("a") as handle:
        handle.write('{"batch": 3, "par')  # and a torn line from a kill during the append
    records = run_batches(log, next_batch, after_batch=lambda batch: seen.append(len(batch)))
    assert [r["batch"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["batch"] for r in read_log(log)] == [0, 1, 2, 3, 4]
    assert seen == [1, 1]  # only the two missing batches were made


def test_a_damaged_line_stops_the_driver_with_one_line(tmp_path: Path) -> None:
    log = tmp_path / "batches.jsonl"
    log.write_text('{"batch": 0}\nnot json\n{"batch": 2}\n')
    with pytest.raises(CorruptFileError, match="line 2"):
        run_batches(log, lambda records: None)
