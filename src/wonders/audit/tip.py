"""The local chain-tip file, ``<spool>.tip.json``: the newest batch of this forwarder's
audit chain (sequence number, SHA-256, key). A restart that finds the chain in the bucket
shorter refuses to continue from the cut (anyone who can write the mailbox can delete or
roll back objects there). The path is given by the forwarder (beside its spool file)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Tip", "load_tip", "save_tip"]

log = logging.getLogger("wonders.forwarder")


@dataclass(frozen=True, slots=True)
class Tip:
    """The newest batch of a chain: what a restart must find in the bucket."""

    seq: int
    hash: str
    key: str


def load_tip(path: Path) -> Tip | None:
    try:
        doc = json.loads(path.read_text())
        return Tip(int(doc["seq"]), str(doc["hash"]), str(doc["key"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.error("audit: the chain tip file %s is unreadable (%s); ignored", path, exc)
        return None


def save_tip(path: Path, tip: Tip) -> None:
    """Replace the tip file atomically (fsynced: it must survive a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as out:
        json.dump({"seq": tip.seq, "hash": tip.hash, "key": tip.key}, out)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(out.name, 0o600)
    os.replace(out.name, path)
