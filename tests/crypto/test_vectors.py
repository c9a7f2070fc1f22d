"""Run every envelope test vector in tests/vectors/: each file says what must happen."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wonders.crypto import BodyOpener, PrivateKey, open_request, open_response
from wonders.errors import REASONS, EnvelopeError

VECTORS = sorted((Path(__file__).parent.parent / "vectors").glob("*.json"))


@dataclass(frozen=True)
class _RequestRef:
    id: str
    digest: bytes


def _body(opened_body: bytes | None, opener: BodyOpener, segments: list[bytes]) -> bytes:
    if opened_body is not None:
        assert segments == [], "an inline body has no separate segments"
        return opened_body
    body = b"".join(opener.feed(s) for s in segments)
    opener.close()
    return body


def _run(doc: dict[str, Any]) -> dict[str, Any]:
    keys = {
        name: PrivateKey.from_raw(name, bytes.fromhex(k["ed25519"]), bytes.fromhex(k["x25519"]))
        for name, k in doc["keys"].items()
    }
    head = base64.b64decode(doc["head"])
    segments = [base64.b64decode(s) for s in doc["segments"]]
    now, skew = doc["now"], doc["skew"]
    if doc["open"] == "request":
        senders = {keys[n].kid: keys[n].public for n in doc["registered"]}
        expected = doc["expected_sender"]
        req = open_request(
            head, recipient=keys[doc["forwarder"]], senders=senders, now=now, skew=skew,
            expected_sender=keys[expected].kid if expected else None,
            expected_id=doc["expected_id"],
        )
        body = _body(req.body, req.body_opener(), segments)
        return {"method": req.head.method, "url": req.head.url,
                "headers": [list(h) for h in req.head.headers],
                "body_sha256": hashlib.sha256(body).hexdigest(), "body_length": len(body)}
    ref = _RequestRef(doc["request_id"], bytes.fromhex(doc["request_digest"]))
    resp = open_response(head, recipient=keys[doc["client"]],
                         forwarder=keys[doc["forwarder"]].public, request=ref, now=now, skew=skew)
    body = _body(resp.body, resp.body_opener(), segments)
    return {"status": resp.head.status, "reason": resp.head.reason,
            "headers": [list(h) for h in resp.head.headers],
            "body_sha256": hashlib.sha256(body).hexdigest(), "body_length": len(body)}


def test_there_are_vectors_for_every_reason_that_a_stored_object_can_cause() -> None:
    outcomes = {json.loads(p.read_text()).get("reason") for p in VECTORS}
    assert outcomes == {None, *REASONS}  # success vectors, and each reason (none unknown)


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_each_vector_opens_or_fails_as_it_says(path: Path) -> None:
    doc = json.loads(path.read_text())
    if doc["expect"] == "success":
        assert _run(doc) == doc["result"], doc["description"]
        return
    assert doc["expect"] == "failure"
    with pytest.raises(EnvelopeError) as info:
        _run(doc)
    assert info.value.reason == doc["reason"], f"{doc['description']}: {info.value}"
