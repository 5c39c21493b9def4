"""The SuperNI loader on local files (good, truncated, wrong ids, missing) and downloads."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from refine_af.errors import UserError
from refine_af.evaluation import data
from refine_af.evaluation.data import DataSettings, check_tasks_available, load_task

TASK = "task1152_bard_analogical_reasoning_causation"
OTHER = "task1345_glue_qqp_question_paraprashing"


def _rows(shared_data: Path, task: str) -> list[dict]:
    with gzip.open(shared_data / "superni_test.jsonl.gz", "rt") as handle:
        return [r for r in map(json.loads, handle) if r["task_name"] == task]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _task_json(rows: list[dict], extra_instances: int = 0) -> dict:
    """A natural-instructions task file from JSONL rows (plus instances past the first 100)."""
    first = rows[0]
    instances = [{"id": r["id"], "input": r["input"], "output": r["outputs"]} for r in rows]
    instances += [
        {"id": f"extra-{i}", "input": "x", "output": ["y"]} for i in range(extra_instances)
    ]
    return {
        "Definition": [first["definition"]],
        "Categories": first["categories"],
        "Positive Examples": first["positive_examples"],
        "Instances": instances,
    }


def test_shared_jsonl(shared_data: Path) -> None:
    settings = DataSettings(data=str(shared_data / "superni_test.jsonl.gz"))
    docs = load_task(TASK, settings)
    assert len(docs) == 100
    assert docs[0]["category"] == "Word Analogy"
    assert docs[0]["references"] == _rows(shared_data, TASK)[0]["outputs"]
    assert len(data.available_tasks(settings)) == 30


def test_metadata_and_env(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(shared_data / "superni_test.jsonl.gz")
    assert DataSettings.from_metadata({"superni_data": path}).data == path
    monkeypatch.setenv("REFINEAF_SUPERNI_DATA", path)
    assert DataSettings.from_metadata({"pretrained": "x"}).data == path


def test_directory_of_task_files_takes_first_100(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / f"{TASK}.json").write_text(json.dumps(_task_json(_rows(shared_data, TASK), 5)))
    settings = DataSettings(
        data=str(tmp_path), references=str(shared_data / "superni_test_references.jsonl")
    )
    docs = load_task(TASK, settings)
    assert [d["id"] for d in docs] == [r["id"] for r in _rows(shared_data, TASK)]
    assert docs[0]["positive_examples"][0]["input"]


def test_truncated_task_is_an_error(shared_data: Path, tmp_path: Path) -> None:
    rows = _rows(shared_data, TASK)[:57]
    path = _write_jsonl(tmp_path / "part.jsonl", rows)
    refs = str(shared_data / "superni_test_references.jsonl")
    with pytest.raises(UserError, match=r"truncated: 57 of its 100"):
        load_task(TASK, DataSettings(data=str(path), references=refs))


def test_wrong_ids_are_an_error(shared_data: Path, tmp_path: Path) -> None:
    rows = _rows(shared_data, TASK)
    rows[3] = {**rows[3], "id": "task1152-not-official"}
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    refs = str(shared_data / "superni_test_references.jsonl")
    with pytest.raises(UserError, match=r"instance #3 has id task1152-not-official"):
        load_task(TASK, DataSettings(data=str(path), references=refs))


def test_missing_tasks_are_named(shared_data: Path, tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "one.jsonl", _rows(shared_data, TASK))
    settings = DataSettings(
        data=str(path), references=str(shared_data / "superni_test_references.jsonl")
    )
    with pytest.raises(UserError, match=rf"has no task {OTHER} \(it has 1 of the 119"):
        load_task(OTHER, settings)
    with pytest.raises(UserError, match=rf"1 of the 2 requested .*: {OTHER}"):
        check_tasks_available([TASK, OTHER], settings)
    with pytest.raises(UserError, match="not SuperNI test tasks: task9999_x"):
        check_tasks_available(["task9999_x"], settings)


def test_references_found_beside_the_data(shared_data: Path) -> None:
    settings = DataSettings(data=str(shared_data / "superni_test.jsonl.gz"))
    refs = data.load_references(settings)
    assert len(refs) == 119 and sum(len(v) for v in refs.values()) == 11810


# ---------------------------------------------------------------------------------------------
# Downloads, against a local HTTP server laid out like raw.githubusercontent.com.


@pytest.fixture
def fake_github(shared_data: Path, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    root = tmp_path / "www"
    tasks = root / "allenai" / "natural-instructions" / data.NI_COMMIT / "tasks"
    tasks.mkdir(parents=True)
    (tasks / f"{TASK}.json").write_text(json.dumps(_task_json(_rows(shared_data, TASK), 3)))
    refs = root / "refs.jsonl"
    refs.write_bytes((shared_data / "superni_test_references.jsonl").read_bytes())
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_download_once_and_cache(
    fake_github: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, requests = fake_github
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REFINEAF_SUPERNI_BASE_URL", f"{url}/allenai/natural-instructions")
    monkeypatch.setenv("REFINEAF_SUPERNI_REFERENCES_URL", f"{url}/refs.jsonl")
    docs = load_task(TASK, DataSettings())
    assert len(docs) == 100  # Instances[:100] of a file with 103
    again = load_task(TASK, DataSettings())
    assert again == docs
    assert sorted(requests) == sorted(
        [f"/allenai/natural-instructions/{data.NI_COMMIT}/tasks/{TASK}.json", "/refs.jsonl"]
    )
    cached = tmp_path / "cache" / "superni" / data.NI_COMMIT / "tasks" / f"{TASK}.json"
    assert cached.is_file()
    # A task the server does not have: one clear line.
    with pytest.raises(UserError, match=rf"cannot download .*{OTHER}\.json"):
        load_task(OTHER, DataSettings())


def test_download_via_file_url_and_checksum(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad_refs.jsonl"
    bad.write_text('{"id": "x", "references": ["y"], "task_id": "t"}\n')
    monkeypatch.setenv("REFINEAF_SUPERNI_REFERENCES_URL", bad.as_uri())
    with pytest.raises(UserError, match="does not match its pinned SHA-256"):
        data.load_references(DataSettings())
    good = shared_data / "superni_test_references.jsonl"
    assert hashlib.sha256(good.read_bytes()).hexdigest() == data.REFERENCES_SHA256
    monkeypatch.setenv("REFINEAF_SUPERNI_REFERENCES_URL", good.as_uri())
    assert len(data.load_references(DataSettings())) == 119


# ---------------------------------------------------------------------------------------------
# Damaged or missing inputs: one line that names the fix.


def test_truncated_gzip_is_one_clear_line(shared_data: Path, tmp_path: Path) -> None:
    blob = (shared_data / "superni_test.jsonl.gz").read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match=r"cut\.jsonl\.gz is damaged or cut short after line \d+"):
        data.available_tasks(DataSettings(data=str(cut)))
    garbage = tmp_path / "garbage.jsonl.gz"
    garbage.write_bytes(b"not gzip at all\n")
    with pytest.raises(UserError, match=r"garbage\.jsonl\.gz is damaged"):
        data.available_tasks(DataSettings(data=str(garbage)))


def test_missing_reference_file_names_its_variable(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match="does not exist: fix REFINEAF_SUPERNI_REFERENCES"):
        data.load_references(DataSettings(references=str(tmp_path / "nope.jsonl")))
    # Data without a reference file beside it, and the download unreachable.
    lone = tmp_path / "lone.jsonl"
    lone.write_bytes((shared_data / "superni_test_references.jsonl").read_bytes()[:0])
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REFINEAF_SUPERNI_REFERENCES_URL", (tmp_path / "absent.jsonl").as_uri())
    with pytest.raises(UserError, match=r"cannot download .*set REFINEAF_SUPERNI_REFERENCES"):
        data.load_references(DataSettings(data=str(lone)))
