"""Write the audit and heartbeat test vectors (``tests/vectors/audit/*.json``).

Run ``python tests/vectors/generate_audit.py`` only when a format changes on purpose; the
vectors are otherwise fixed, and ``tests/audit/test_audit_vectors.py`` checks that this
code still writes the same bytes and verifies (or refuses) each object as the file says.
Everything is deterministic (fixed keys, times and records; Ed25519 signatures are
deterministic), so regenerating unchanged formats rewrites the same bytes.

File format (one case per file):

- ``signer``: the forwarder's raw private keys (hex) and name; the verifier uses its public
  half, as a client or an auditor holds the forwarder's public bundle;
- ``kind``: ``batch``, ``head``, ``intent`` or ``heartbeat`` (one object, in ``object``,
  base64, stored at ``key``), or ``chain`` (a log: ``objects`` maps each stored key to its
  bytes, base64, and ``now`` is the verifier's clock);
- ``expect``: ``success`` (then ``result`` says what must come out: the parsed members, and
  for a batch its ``hash``) or ``failure`` (then ``reason`` is ``signature``, the signature
  does not verify, or ``malformed``, signed or not it is not a valid object); a ``chain``
  expects ``problems``: each ``{"key", "kind"}`` a verifier must report, ``kind`` one of
  ``missing`` (batches deleted, named at the key where the gap shows), ``broken`` (a
  ``prev`` that is not the SHA-256 of the batch before), ``replaced`` (the newest batch
  differs from the one the head or the heartbeat names), ``inserted`` and ``moved``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wonders.audit import ChainHead, Intent, encode_batch, iso_time
from wonders.audit._log import _HEAD_DOMAIN, _SIGNATURE_DOMAIN, _line
from wonders.crypto import PrivateKey, new_request_id
from wonders.mailbox import layout
from wonders.relay.records import HEARTBEAT_DOMAIN, Heartbeat

HERE = Path(__file__).parent / "audit"
NOW = 1_795_305_600.0  # 2026-11-22T00:00:00Z, as the envelope vectors


def _seed(label: str) -> bytes:
    return hashlib.sha256(b"wonders1 test vector " + label.encode()).digest()


def _key(name: str) -> PrivateKey:
    return PrivateKey.from_raw(name, _seed(name + " ed25519"), _seed(name + " x25519"))


FW, FW2 = _key("fw1"), _key("fw2")  # the same seeds as the envelope vectors' fw1 and fw2


def rid(n: int) -> str:
    return new_request_id(NOW - 3600, n.to_bytes(10, "big"))


def record(n: int, when: float, **changes: Any) -> dict[str, Any]:
    """An audit record as the forwarder writes one (`Forwarder._record`)."""
    doc: dict[str, Any] = {
        "time": iso_time(when), "forwarder": "fw1", "client": "gpu01", "id": rid(n),
        "attempt": 0, "method": "GET", "scheme": "https", "host": "pypi.org", "port": 443,
        "path": f"/simple/pkg{n}/?token=[redacted]", "decision": "allow",
        "rule": 'client gpu01: allow[0] "pypi.org"', "status": 200, "error": None,
        "up": 0, "down": 1000 + n, "queue_ms": 12.5, "upstream_ms": 80.0, "total_ms": 95.1,
        "request_sha256": hashlib.sha256(b"").hexdigest(),
        "response_sha256": hashlib.sha256(b"x" * (1000 + n)).hexdigest(),
        "request_headers": [["Accept", "*/*"], ["Authorization", "[redacted]"]],
        "response_headers": [["Content-Type", "text/html"]],
    }
    doc.update(changes)
    return doc


DENIED = {"host": "example.com", "path": "/", "decision": "deny", "rule": "client gpu01: "
          "default deny", "status": 403, "down": 91, "upstream_ms": None,
          "response_sha256": None, "response_headers": []}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def signed_lines(body: bytes, domain: bytes, key: PrivateKey = FW) -> bytes:
    """``body`` and a signature line over ``domain`` + ``body``: how every audit object
    ends (a batch, a head, an intent)."""
    return body + _line({"signature": b64(key.signing.sign(domain + body))})


def batch_key(seq: int, when: float) -> str:
    return layout.audit_batch_key("fw1", seq, datetime.fromtimestamp(when, UTC))


def heartbeat(seq: int, digest: str) -> Heartbeat:
    return Heartbeat(forwarder="fw1", instance="5f0c1e2d3a4b5c6d", kid=FW.kid, version="0.1.0",
                     started=NOW - 7200, time=NOW, interval=5.0, in_flight=0, policy="ab" * 32,
                     counters={"requests": 5, "denied": 1, "errors": 0},
                     audit={"seq": seq, "hash": digest, "waiting": 0, "blocked": False,
                            "failing": ""})


def heartbeat_object(beat: Heartbeat, *, version: int = 2, domain: bytes = HEARTBEAT_DOMAIN,
                     key: PrivateKey = FW) -> bytes:
    """A heartbeat as `Heartbeat.sign` writes one, with its version and domain choosable."""
    text = json.dumps({"v": version, **asdict(beat)}, sort_keys=True)
    signature = key.signing.sign(domain + text.encode())
    return json.dumps({"body": text, "signature": b64(signature)}, indent=1).encode()


def write(name: str, doc: dict[str, Any]) -> None:
    doc = {"description": doc.pop("description"), "kind": doc.pop("kind"),
           "signer": {"name": FW.name, "ed25519": _seed("fw1 ed25519").hex(),
                      "x25519": _seed("fw1 x25519").hex()}, **doc}
    (HERE / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")


def one(name: str, description: str, kind: str, key: str, data: bytes, *,
        result: dict[str, Any] | None = None, reason: str | None = None) -> None:
    assert (result is None) != (reason is None)
    doc: dict[str, Any] = {"description": description, "kind": kind, "key": key,
                           "object": b64(data)}
    if result is not None:
        doc.update(expect="success", result=result)
    else:
        doc.update(expect="failure", reason=reason)
    write(name, doc)


def chain(name: str, description: str, objects: dict[str, bytes],
          problems: list[tuple[str, str]]) -> None:
    write(name, {"description": description, "kind": "chain", "now": NOW,
                 "objects": {key: b64(data) for key, data in sorted(objects.items())},
                 "expect": "failure" if problems else "success",
                 "problems": [{"key": key, "kind": kind} for key, kind in problems]})


def batch_result(key: str, data: bytes, seq: int, prev: str, when: float,
                 count: int) -> dict[str, Any]:
    return {"key": key, "forwarder": "fw1", "kid": FW.kid, "seq": seq, "prev": prev,
            "time": iso_time(when), "records": count, "hash": hashlib.sha256(data).hexdigest()}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for old in HERE.glob("*.json"):
        old.unlink()

    # -------------------------------------------------------------- one batch
    t0, t1, t2 = NOW - 90_000, NOW - 3000, NOW - 1000  # filed on 2026-11-20, -21, -21
    records0 = [record(1, t0 - 1), record(2, t0 - 0.5, **DENIED)]
    b0 = encode_batch(FW, "fw1", 0, "", t0, records0)
    k0 = batch_key(0, t0)
    one("batch", "batch 0 of fw1: a header line, two records, the signature line", "batch",
        k0, b0, result={**batch_result(k0, b0, 0, "", t0, 2), "lines": records0})
    lines = b0.split(b"\n")
    one("batch-bit-flip-record", "one bit flipped in a record", "batch", k0,
        flip(b0, len(lines[0]) + 20), reason="signature")
    signature = bytearray(base64.b64decode(json.loads(lines[-2])["signature"]))
    signature[5] ^= 0x01
    one("batch-bit-flip-signature", "one bit flipped in the signature", "batch", k0,
        b"\n".join(lines[:-2]) + b"\n" + _line({"signature": b64(bytes(signature))}),
        reason="signature")
    body = b"\n".join(lines[:-2]) + b"\n"
    one("batch-without-domain", "signed over the lines alone, without the domain string",
        "batch", k0, signed_lines(body, b""), reason="signature")
    one("batch-with-head-domain", "signed over the audit head's domain string", "batch", k0,
        signed_lines(body, _HEAD_DOMAIN), reason="signature")
    one("batch-by-another-key", "signed by another forwarder key (fw2)", "batch", k0,
        encode_batch(FW2, "fw1", 0, "", t0, records0), reason="signature")
    one("batch-cut", "the final newline cut off", "batch", k0, b0[:-1], reason="malformed")
    one("batch-record-dropped", "a record line removed and the rest signed again: the "
        "header still counts two", "batch", k0,
        signed_lines(lines[0] + b"\n" + lines[1] + b"\n", _SIGNATURE_DOMAIN),
        reason="malformed")
    header = json.loads(lines[0])
    one("batch-version-2", "a well-signed batch whose header says wonders_audit 2", "batch", k0,
        signed_lines(_line({**header, "wonders_audit": 2}) + lines[1] + b"\n" + lines[2]
                     + b"\n", _SIGNATURE_DOMAIN), reason="malformed")
    one("batch-record-not-object", "a well-signed batch whose record is a JSON list",
        "batch", k0, signed_lines(_line({**header, "records": 1}) + b"[1,2]\n",
                                  _SIGNATURE_DOMAIN), reason="malformed")
    one("batch-no-signature-line", "the signature line replaced by a record", "batch", k0,
        body + lines[1] + b"\n", reason="malformed")

    # ----------------------------------------------------------- head, intent
    head = ChainHead("fw1", 0, hashlib.sha256(b0).hexdigest(), k0)
    one("head", "the head object naming batch 0", "head", layout.audit_head_key("fw1"),
        head.sign(FW), result={"forwarder": "fw1", "seq": 0, "hash": head.hash, "key": k0})
    head_line = head.sign(FW).split(b"\n")[0] + b"\n"
    one("head-with-batch-domain", "the head's line signed over the batch domain string",
        "head", layout.audit_head_key("fw1"), signed_lines(head_line, _SIGNATURE_DOMAIN),
        reason="signature")
    one("head-extra-line", "a second copy of the signature line appended", "head",
        layout.audit_head_key("fw1"), head.sign(FW) + head.sign(FW).split(b"\n")[1] + b"\n",
        reason="malformed")
    intent = Intent("fw1", "5f0c1e2d3a4b5c6d", rid(3), 0, "gpu01", iso_time(NOW - 10), "POST",
                    "https", "api.openai.com", 443, "/v1/chat/completions", "allow",
                    'client gpu01: allow[2] "api.openai.com"')
    intent_key = layout.intent_key(rid(3), 0)
    one("intent", "the intent of attempt 0 of a POST", "intent", intent_key, intent.sign(FW),
        result={"wonders_intent": 1, **asdict(intent)})
    intent_data = intent.sign(FW)
    one("intent-bit-flip", "one bit flipped in the intent's host", "intent", intent_key,
        flip(intent_data, intent_data.index(b"api.openai.com")), reason="signature")
    intent_line = intent_data.split(b"\n")[0] + b"\n"
    one("intent-with-head-domain", "the intent's line signed over the audit head's domain",
        "intent", intent_key, signed_lines(intent_line, _HEAD_DOMAIN), reason="signature")

    # ---------------------------------------------------------------- heartbeats
    beat = heartbeat(0, head.hash)
    members = {"v": 2, **asdict(beat)}
    hb_key = layout.heartbeat_key("fw1")
    one("heartbeat", "a version 2 heartbeat, signed over the domain string", "heartbeat",
        hb_key, beat.sign(FW), result=members)
    assert beat.sign(FW) == heartbeat_object(beat)
    one("heartbeat-version-1", "a version 1 heartbeat as earlier builds wrote it: signed "
        "over the body alone", "heartbeat", hb_key,
        heartbeat_object(beat, version=1, domain=b""), reason="signature")
    one("heartbeat-without-domain", "a version 2 body signed without the domain string",
        "heartbeat", hb_key, heartbeat_object(beat, domain=b""), reason="signature")
    one("heartbeat-version-1-with-domain", "a version 1 body signed over the domain string",
        "heartbeat", hb_key, heartbeat_object(beat, version=1), reason="malformed")
    one("heartbeat-by-another-key", "signed by another forwarder key (fw2)", "heartbeat",
        hb_key, heartbeat_object(beat, key=FW2), reason="signature")
    one("heartbeat-another-kid", "signed by fw1's key, naming another key id", "heartbeat",
        hb_key, heartbeat_object(replace(beat, kid=FW2.kid)), reason="malformed")

    # --------------------------------------------------------------------- chains
    records1 = [record(4, t1 - 1)]
    b1 = encode_batch(FW, "fw1", 1, hashlib.sha256(b0).hexdigest(), t1, records1)
    records2 = [record(5, t2 - 1), record(6, t2 - 0.5)]
    b2 = encode_batch(FW, "fw1", 2, hashlib.sha256(b1).hexdigest(), t2, records2)
    k1, k2 = batch_key(1, t1), batch_key(2, t2)
    h2, hk = hashlib.sha256(b2).hexdigest(), layout.audit_head_key("fw1")
    head2 = ChainHead("fw1", 2, h2, k2).sign(FW)
    beat2 = heartbeat(2, h2).sign(FW)
    whole = {k0: b0, k1: b1, k2: b2, hk: head2, hb_key: beat2}
    chain("chain", "batches 0-2 of fw1, the head and the heartbeat naming batch 2", whole, [])
    chain("chain-batch-deleted", "batch 1 deleted",
          {k: v for k, v in whole.items() if k != k1}, [(k2, "missing")])
    b1_other = encode_batch(FW, "fw1", 1, hashlib.sha256(b0).hexdigest(), t1,
                            [record(7, t1 - 1)])
    chain("chain-batch-replaced", "batch 1 replaced by another well-signed batch 1",
          {**whole, k1: b1_other}, [(k2, "broken")])
    head1 = ChainHead("fw1", 1, hashlib.sha256(b1).hexdigest(), k1).sign(FW)
    chain("chain-end-deleted-head-rolled-back", "batch 2 deleted and the head rolled back "
          "to batch 1; the heartbeat still names batch 2",
          {**{k: v for k, v in whole.items() if k != k2}, hk: head1}, [(hb_key, "missing")])
    b2_other = encode_batch(FW, "fw1", 2, hashlib.sha256(b1).hexdigest(), t2,
                            [record(8, t2 - 1)])
    chain("chain-newest-replaced", "the newest batch replaced: the head and the heartbeat "
          "name another hash", {**whole, k2: b2_other}, [(k2, "replaced"), (k2, "replaced")])
    b0_inserted = encode_batch(FW, "fw1", 0, "00" * 32, t0, records0)
    chain("chain-batch-0-names-a-previous", "a well-signed batch 0 whose prev is not empty "
          "put in the place of batch 0", {**whole, k0: b0_inserted},
          [(k0, "inserted"), (k1, "broken")])
    chain("chain-batches-swapped", "batches 0 and 1 stored under each other's keys",
          {**whole, k0: b1, k1: b0}, [(k0, "moved"), (k1, "moved")])


if __name__ == "__main__":
    main()
