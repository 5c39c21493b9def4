"""One writer per folder: the exclusive lock every writing command holds on its output folder.

Two commands writing one run directory at once (a job started twice, a re-queued job whose first
copy still runs) would each append every batch to the same logs and each mark the other's
running attempt killed in ``status.json``. So every command that writes a folder holds this lock
on it for as long as it runs: ``train`` and each stage command on the run directory, ``score`` on
its output file's folder, ``eval`` on its output directory. A second command on the same folder
stops at once, before it loads a model, with one line: which folder, held by which process on
which host since when, and what to do.

The lock is ``filelock.FileLock`` on ``<folder>/.refineaf.lock``. filelock is the lock
huggingface_hub and the rest of the Hugging Face stack already use (it comes with them and is
maintained); on Unix it takes ``flock``, which the kernel drops when the holder ends however it
ends, so a SIGKILL, an OOM kill or a pre-empted job never leaves the folder locked; on Windows it
uses ``msvcrt`` with the same property. What it does not say is *who* holds a lock, so the holder
writes its PID, host, start time and command into the lock file, and empties it on a clean
release. A lock file that still names a holder while the lock itself is free was left by a
process that died (killed, or its machine lost): it is taken over with one line saying so.

Under ``accelerate launch`` or ``torchrun`` only rank 0 takes the lock (it writes; the other
ranks of the same launch only read), so a launch is one writer.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from refine_af.console import note
from refine_af.errors import UserError

LOCK_NAME = ".refineaf.lock"


class FolderInUse(UserError):
    """Another process holds the folder's lock; the message says who and what to do."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock, as its lock file records it."""

    pid: int | None
    host: str
    started_at: str
    command: str = ""

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def is_running(self) -> bool | None:
        """Whether the process still runs (None: it runs on another host, which we can't ask)."""
        if not self.on_this_host or self.pid is None or sys.platform == "win32":
            return None  # (on Windows, os.kill with signal 0 would end the process)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, under another account
            return True
        return True

    def describe(self) -> str:
        pid = f"PID {self.pid}" if self.pid is not None else "a process"
        return f"{pid} on host {self.host} since {self.started_at}"


def lock_path(folder: Path) -> Path:
    return folder / LOCK_NAME


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in a lock file (None: no file, released cleanly, or unreadable)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        record = json.loads(text)
        pid = record.get("pid")
        return Holder(
            pid=int(pid) if pid is not None else None,
            host=str(record.get("host", "?")),
            started_at=str(record.get("started_at", "?")),
            command=str(record.get("command", "")),
        )
    except (ValueError, TypeError, AttributeError):
        # Half a record: its writer was killed while writing it, so it holds nothing now.
        return Holder(pid=None, host="?", started_at="?")


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _new_file_lock(path: Path) -> Any:
    from filelock import FileLock

    options: dict[str, Any] = {"timeout": 0, "thread_local": False}
    # filelock 4 would otherwise fall back to a marker file of its own on a file system without
    # flock, in the same file this module writes its holder record into; refuse instead.
    if "fallback_to_soft" in inspect.signature(FileLock.__init__).parameters:
        options["fallback_to_soft"] = False
    return FileLock(str(path), **options)


def _write_record(path: Path) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["refineaf", *sys.argv[1:]]) if sys.argv else "",
    }
    _replace_content(path, json.dumps(record) + "\n")


def _replace_content(path: Path, text: str) -> None:
    # Through a second descriptor: filelock's own stays as it is (and keeps the lock).
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Hold:
    lock: Any
    depth: int = 0


# Holds of this process by folder: a command holds its run directory and the stages it runs take
# the same lock again (re-entrant), so only the outermost hold releases it.
_HOLDS: dict[str, _Hold] = {}


def _acquire(folder: Path, what: str) -> Any:
    from filelock import Timeout

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create {what} {folder} ({error.strerror or error}): choose a folder you can "
            "write to"
        ) from error
    path = lock_path(folder)
    lock = _new_file_lock(path)
    try:
        lock.acquire()
    except Timeout as error:  # before OSError: filelock's Timeout is a TimeoutError
        raise FolderInUse(_in_use_message(folder, what, read_holder(path))) from error
    except OSError as error:
        if error.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            fix = (
                "the file system must support file locks (flock); use a folder on a local disk "
                "or an NFS mount with locking"
            )
        else:
            fix = f"make {path} writable, or choose another folder"
        reason = error.strerror or error
        raise UserError(f"cannot lock {what} {folder} ({reason}): {fix}") from error
    try:
        previous = read_holder(path)
        if previous is not None:
            _note_takeover(folder, what, previous)
        _write_record(path)
    except BaseException:
        lock.release()
        raise
    return lock


def _in_use_message(folder: Path, what: str, holder: Holder | None) -> str:
    if holder is None or holder.pid is None:
        who = "another process, which is just starting"
        stop = "stop it"
    else:
        who = holder.describe()
        stop = f"stop it (kill {holder.pid}" + ("" if holder.on_this_host else f" on {holder.host}")
        stop += ")"
    return (
        f"{what} {folder} is in use by {who}: two commands writing one folder would mix their "
        f"outputs; wait for it to finish, or {stop} and run this command again to continue"
    )


def _note_takeover(folder: Path, what: str, previous: Holder) -> None:
    running = previous.is_running()
    if previous.pid is None:
        why = "a process that was killed while it took the lock"
    elif running is False:
        why = f"{previous.describe()}, which is no longer running"
    else:
        why = f"{previous.describe()}, which no longer holds it"
    note(f"{what} {folder}: took over the lock left by {why}; continuing its work")


def _release(hold: _Hold, folder: Path) -> None:
    path = lock_path(folder)
    try:
        _replace_content(path, "")  # a clean release: the next holder has nothing to take over
    except OSError:
        pass  # the folder was removed or the disk is full: the lock is released all the same
    finally:
        hold.lock.release()


def held_folders() -> list[Path]:
    """The folders this process holds the lock of (the ones it writes), outermost first."""
    return [Path(name) for name in _HOLDS]


@contextmanager
def hold(folder: str | Path, what: str = "run directory") -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (created if missing) while the block runs.

    Raises :class:`FolderInUse` (a one-line :class:`UserError`) when another process holds it.
    Re-entrant within a process; a no-op in the ranks other than 0 of a distributed launch.
    """
    if not _is_main_rank():
        yield
        return
    folder = Path(folder).expanduser()
    name = str(folder.resolve())
    entry = _HOLDS.get(name)
    if entry is None:
        entry = _HOLDS[name] = _Hold(_acquire(folder, what))
    entry.depth += 1
    try:
        yield
    finally:
        entry.depth -= 1
        if entry.depth == 0:
            del _HOLDS[name]
            _release(entry, folder)
