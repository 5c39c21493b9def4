"""Resumable work: outputs bound to a key, and the one driver that extends a batch log.

Every stage, ``refineaf score`` and ``refineaf eval`` follow one rule for what they find on disk
(the ``key`` is a fingerprint of every setting and input the outputs depend on):

* **same key**: continue from the last finished batch (or trainer checkpoint);
* **changed key**: set the old outputs aside and start;
* **restart** (``--restart``): set the old outputs aside and start, whatever the key.

Set aside means renamed to a free ``<name>.replaced-<old key>[-n]`` sibling, never deleted.
:meth:`Output.claim` applies the rule to a folder (its key in ``<folder>/key``) or a single file
(its key in ``<file>.key``); the key file is written atomically, after the outputs it describes
were set aside, so a kill in between leaves either the old pair or an empty output with the new
key.

Work that comes in batches (stage 1's instructions, stage 3's instances, scored rows, the eval's
chunks of tasks) is an append-only JSON Lines log (:mod:`refine_af.storage`: one ``fsync``-ed write
per batch; a torn last line from a kill is cut off on the next read; a damaged earlier line stops
the command with one line). :func:`run_batches` replays the log and appends one batch after
another until the work function says it is finished, so a kill loses at most the batch in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from refine_af.console import note
from refine_af.storage import Record, append_records, read_log, write_text_atomic

KEY_FILE = "key"


def set_aside(path: Path, label: str) -> Path:
    """Rename ``path`` (a file or folder) to a free ``<name>.replaced-<label>[-n]`` sibling."""
    aside = path.with_name(f"{path.name}.replaced-{label}")
    number = 1
    while aside.exists() or aside.with_name(aside.name + ".key").exists():
        number += 1
        aside = path.with_name(f"{path.name}.replaced-{label}-{number}")
    path.rename(aside)
    return aside


@dataclass(frozen=True)
class Output:
    """A command's output, a folder (``is_folder``) or one file, bound to the key it was made
    with."""

    path: Path
    is_folder: bool = True

    @property
    def key_file(self) -> Path:
        if self.is_folder:
            return self.path / KEY_FILE
        return self.path.with_name(self.path.name + ".key")

    def stored_key(self) -> str | None:
        """The key the outputs were made with (None: no key file)."""
        if not self.key_file.is_file():
            return None
        return self.key_file.read_text(encoding="utf-8").strip() or None

    def holds_outputs(self) -> bool:
        if self.is_folder:
            return self.path.is_dir() and any(p.name != KEY_FILE for p in self.path.iterdir())
        return self.path.exists()

    def claim(self, key: str, restart: bool, contents: str = "outputs") -> Path | None:
        """Apply the rule: keep outputs of the same key; otherwise (or with ``restart``) set
        them aside. Returns where they went (None when kept or there were none); afterwards the
        output is bound to ``key``."""
        old_key = self.stored_key()
        aside = None
        if self.holds_outputs() and (restart or old_key != key):
            why = "--restart" if restart and old_key == key else "other inputs or settings"
            aside = self._set_aside(old_key or "unknown")
            note(f"{contents} in {self.path} set aside ({why}): now {aside}")
        (self.path if self.is_folder else self.path.parent).mkdir(parents=True, exist_ok=True)
        if self.stored_key() != key:
            write_text_atomic(self.key_file, key + "\n")
        return aside

    def _set_aside(self, label: str) -> Path:
        aside = set_aside(self.path, label)
        if not self.is_folder and self.key_file.is_file():
            self.key_file.rename(aside.with_name(aside.name + ".key"))
        return aside


def run_batches(
    log: Path,
    next_batch: Callable[[list[Record]], list[Record] | None],
    after_batch: Callable[[list[Record]], None] | None = None,
    records: list[Record] | None = None,
) -> list[Record]:
    """Extend the append-only ``log`` until ``next_batch`` returns None; return every record.

    ``next_batch(records)`` sees every record logged so far (those of earlier attempts first)
    and returns the next batch's records, which are appended in one write before
    ``after_batch(batch)`` runs (progress bars, status). ``records``: the log as already read
    (default: read here). An empty batch is allowed (a process that writes nothing).
    """
    records = read_log(log) if records is None else records
    while (batch := next_batch(records)) is not None:
        append_records(log, batch)
        records.extend(batch)
        if after_batch is not None:
            after_batch(batch)
    return records
