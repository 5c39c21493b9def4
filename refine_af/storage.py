"""Files the project writes: JSON Lines logs, atomic writes of files and folders.

Every stage, the eval and ``refineaf score`` write through this module, so "a kill loses at most
the record in flight" and "a damaged file stops the command with one line" hold in one place:

* :func:`append_records` adds lines to an append-only log in one write and ``fsync``s it;
* :func:`read_log` reads such a log back; a last line without its newline is what a kill during
  :func:`append_records` leaves, so it is cut off (the file is truncated to the last complete
  line) and will be produced again. A line that does not parse anywhere else is not a torn write
  but damage: :class:`CorruptFileError` names the file and line and nothing is changed;
* :func:`read_records` reads an input file the user gave (no repair: every line must parse);
* :func:`write_records_atomic`, :func:`write_json_atomic`, :func:`write_text_atomic` and
  :func:`atomic_directory` write to a ``.partial`` sibling and rename it into place, so a reader
  sees the old content or the new, never half of one;
* a write that fails (a full disk, a folder deleted while the command runs) is a
  :class:`StorageError`: one line naming the file, saying that the same command resumes.

Parsing is ``jsonlines``'s (it reports the line number of a bad line).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonlines

from refine_af.errors import UserError

Record = dict[str, Any]
PARTIAL_SUFFIX = ".partial"


class CorruptFileError(UserError):
    """A file the project needs is damaged; the message names the file and the line."""


class StorageError(UserError):
    """A write failed (a full disk, a folder deleted while the command ran); the message names
    the file and says that running the same command again resumes."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
RESUMES = "run the same command again: it resumes from the last complete batch or checkpoint"


def describe_os_error(error: OSError, path: Path | str | None = None) -> str:
    """One line for a failed write: the file, the reason in words, and what to do."""
    where = path if path is not None else error.filename
    target = f"cannot write {where}" if where else "a write failed"
    code = error.errno
    if code in DISK_FULL:
        return f"{target}: no space left on the device (or quota); free some space, then {RESUMES}"
    if code == errno.ENOENT:
        folder = Path(where).parent if where else "its folder"
        return (
            f"{target}: {folder} is gone (moved or deleted while the command ran); run the same "
            "command again: it resumes from the outputs that are still there"
        )
    if code == errno.EROFS:
        return f"{target}: the file system is read-only; make it writable, then {RESUMES}"
    if code in (errno.EACCES, errno.EPERM):
        return f"{target}: permission denied; make it writable, then {RESUMES}"
    reason = error.strerror or type(error).__name__
    return f"{target} ({reason}); once that is fixed, {RESUMES}"


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError of the block (which often names no file: a failed ``write`` or
    ``fsync`` on a full disk) into a :class:`StorageError` naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as error:
        raise StorageError(describe_os_error(error, path)) from error


def _dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


def _parse_lines(path: Path, lines: Iterable[bytes], what: str) -> list[Record]:
    records: list[Record] = []
    reader = jsonlines.Reader(lines)
    try:
        for record in reader.iter(type=dict, skip_empty=True):
            records.append(record)
    except jsonlines.InvalidLineError as error:
        raise CorruptFileError(
            f"{path} line {error.lineno} is not a JSON object: {what}"
        ) from error
    return records


def read_log(path: Path) -> list[Record]:
    """Records of an append-only log; a torn last line (a kill mid-append) is cut off the file.

    A damaged line before the last one raises :class:`CorruptFileError` and leaves the file as
    it is: the intact records after it were real work, so they are not thrown away silently.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    records = _parse_lines(
        path,
        complete,
        "repair or delete that line (or the whole file to redo its work), then run again",
    )
    if tail:
        with writing(path), path.open("rb+") as handle:
            handle.truncate(len(data) - len(tail))
    return records


def read_records(path: Path, what: str = "fix that line") -> list[Record]:
    """Every record of a JSON Lines file someone gave us; a bad line is a one-line error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise UserError(f"{path} does not exist") from error
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from error
    return _parse_lines(path, data.splitlines(), what)


def append_records(path: Path, records: Iterable[Record]) -> None:
    """Append records as lines in one write, flushed to disk before returning."""
    text = "".join(_dumps(record) + "\n" for record in records)
    if not text:
        return
    with writing(path), path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def partial_path(path: Path) -> Path:
    """The sibling a file or folder is written to before it is renamed into place."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file so that a kill mid-write leaves the old file, not a truncated one."""
    partial = partial_path(path)
    with writing(path):
        with partial.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)


def write_records_atomic(path: Path, records: Iterable[Record]) -> None:
    write_text_atomic(path, "".join(_dumps(record) + "\n" for record in records))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path, what: str = "delete it to start that part again") -> Any:
    """A JSON file's content, None when it does not exist; damage is a one-line error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error.msg}): {what}") from error


def keep_records(path: Path, keep: Callable[[Record], bool]) -> None:
    """Rewrite a log with only the records ``keep`` accepts (e.g. steps before a checkpoint)."""
    if path.is_file():
        write_records_atomic(path, [record for record in read_log(path) if keep(record)])


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh ``.partial`` folder to fill; on success it replaces ``target`` at once.

    A kill while the folder is written leaves ``target`` as it was (and a ``.partial`` folder the
    next attempt clears).
    """
    partial = partial_path(target)
    with writing(target):
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    try:
        yield partial
    except OSError as error:
        # What fills the folder (save_pretrained) may meet a full disk: name the folder. Other
        # errors of the block (a source file it reads) are the caller's to word.
        if error.errno in DISK_FULL:
            raise StorageError(describe_os_error(error, target)) from error
        raise
    with writing(target):
        if target.exists():
            # Two renames, not rmtree then rename: the old folder is gone only once the new is in.
            old = target.with_name(target.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(partial, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, target)


def file_digest(path: Path) -> str:
    """A short SHA-256 of a file's content (streamed, so large files are fine)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def directory_digest(folder: Path) -> str:
    """A short digest of every file in a folder (an adapter: its weights and config)."""
    parts = [
        f"{p.relative_to(folder)}:{file_digest(p)}"
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
