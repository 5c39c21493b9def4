"""The one download helper (pooch), through the seed tasks' download: cached, SHA-256 checked."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from refine_af import seeds
from refine_af.download import fetch
from refine_af.errors import UserError


def test_seed_tasks_download_once_checked_and_cached(
    seed_tasks_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(seeds.SEED_TASKS_ENV, raising=False)
    digest = hashlib.sha256(seed_tasks_file.read_bytes()).hexdigest()
    assert digest == seeds.SEED_TASKS_SHA256  # the shared copy is the pinned file
    mirror = tmp_path / "mirror" / "seed_tasks.jsonl"
    mirror.parent.mkdir()
    mirror.write_bytes(seed_tasks_file.read_bytes())
    path = seeds.download_seed_tasks(mirror.as_uri())
    assert path.read_bytes() == seed_tasks_file.read_bytes()
    assert len(seeds.load_seed_tasks(path)) == 175
    mirror.unlink()  # cached: no second download
    assert seeds.download_seed_tasks(mirror.as_uri()) == path
    assert not list(path.parent.glob("tmp*"))  # no partial file left beside it


def test_a_changed_source_is_refused_and_nothing_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFINEAF_CACHE", str(tmp_path / "cache"))
    changed = tmp_path / "seed_tasks.jsonl"
    changed.write_text('{"instruction": "x", "instances": []}\n')
    with pytest.raises(UserError) as error:
        seeds.download_seed_tasks(changed.as_uri())
    message = str(error.value)
    assert "does not match its pinned SHA-256" in message and "--seed-tasks PATH" in message
    assert "\n" not in message
    assert not list((tmp_path / "cache").rglob("seed_tasks.jsonl"))


def test_an_unreachable_source_is_one_line_with_the_hint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cannot download .*absent\.json .*: use a local copy$"):
        fetch((tmp_path / "absent.json").as_uri(), tmp_path / "x.json", None, "use a local copy")
