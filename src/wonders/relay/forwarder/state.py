"""A forwarder's local state, beside its audit spool file: what the bucket cannot be
trusted to remember, because anyone who can write the mailbox can delete or roll back
objects there.

* ``<spool>.executed``: the request ids this forwarder has answered, each with the time
  until which it could still open (``rid until`` per line, appended as requests are
  answered). A head copied back after its claims were deleted is refused as a replay.
* ``<spool>.tip.json``: the newest batch of this forwarder's audit chain (sequence
  number, SHA-256, key). A restart that finds the chain in the bucket shorter refuses to
  continue from the cut.

Without a spool file (tests, ``Forwarder`` used as a library) the executed ids live in
memory only and are rebuilt at start from the forwarder's own recent audit batches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from wonders.crypto import ID_PATTERN, request_id_time

__all__ = ["ExecutedIds", "state_paths"]

log = logging.getLogger("wonders.forwarder")

#: Errors of records that do not mean "answered": the attempt failed half way (its own
#: instance or a takeover may try again), or the record completes a dead attempt.
_UNFINISHED = ("store:", "forwarder-died")


def state_paths(spool: Path) -> tuple[Path, Path]:
    """The executed-ids file and the chain-tip file kept beside ``spool``."""
    return spool.with_name(spool.name + ".executed"), spool.with_name(spool.name + ".tip.json")


class ExecutedIds:
    """Request ids answered by this forwarder, each kept until it can no longer open.

    ``keep`` is how long after a request is handled it could still open (the longest
    lifetime accepted plus twice the clock skew); ``path`` (optional) persists the set.
    """

    def __init__(self, keep: float, path: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.keep = keep
        self.path = path
        self.clock = clock
        self._until: dict[str, float] = {}
        self._added = 0
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._load(path)
            except OSError as exc:
                log.error("executed ids kept in memory only: %s: %s", path, exc)
                self.path = None

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        now = self.clock()
        for line in text.splitlines():
            rid, _, until = line.partition(" ")
            with contextlib.suppress(ValueError):
                if ID_PATTERN.fullmatch(rid) and float(until) > now:
                    self._until[rid] = max(float(until), self._until.get(rid, 0.0))
        self._rewrite()

    def _rewrite(self) -> None:
        """Rewrite the file with the ids still kept (atomically)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False) as out:
            out.write("".join(f"{rid} {until:.3f}\n" for rid, until in self._until.items()))
        os.chmod(out.name, 0o600)
        os.replace(out.name, self.path)

    def __contains__(self, rid: object) -> bool:
        until = self._until.get(str(rid))
        return until is not None and until > self.clock()

    def __len__(self) -> int:
        return len(self._until)

    def add(self, rid: str, until: float) -> None:
        """Remember ``rid`` until ``until`` (Unix seconds), in memory and in the file."""
        if until <= self._until.get(rid, 0.0):
            return
        self._until[rid] = until
        self._added += 1
        if self._added % 1000 == 0:
            now = self.clock()
            self._until = {r: u for r, u in self._until.items() if u > now}
            self._rewrite()
        elif self.path is not None:
            try:
                with self.path.open("a") as out:
                    out.write(f"{rid} {until:.3f}\n")
            except OSError as exc:
                log.warning("executed ids not saved to %s: %s", self.path, exc)

    def note(self, record: dict[str, Any]) -> None:
        """Remember the request of an audit record if the record says it was answered."""
        rid = str(record.get("id") or "")
        error = str(record.get("error") or "")
        if record.get("method") is None or error.startswith(_UNFINISHED):
            return
        if not ID_PATTERN.fullmatch(rid):
            return
        try:
            handled = datetime.fromisoformat(str(record.get("time"))).timestamp()
        except ValueError:
            handled = request_id_time(rid)
        self.add(rid, max(handled, request_id_time(rid)) + self.keep)
