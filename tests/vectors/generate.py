"""Write the envelope test vectors (``tests/vectors/*.json``).

Run ``python tests/vectors/generate.py`` only when the protocol changes on purpose; the
vectors are otherwise fixed, and ``tests/crypto/test_vectors.py`` checks that this code
still opens (or refuses) each one as the file says. Everything is deterministic (fixed
keys, ephemeral keys and ids), so regenerating an unchanged protocol rewrites the same bytes.

File format (one case per file):

- ``keys``: the parties' raw private keys (hex), ``registered``: the clients the forwarder
  knows, ``now``/``skew``: the opener's clock (Unix seconds);
- ``open``: ``"request"`` (as the forwarder, with ``expected_sender``/``expected_id`` from
  the mailbox key) or ``"response"`` (as ``client``, against ``request_id``/``request_digest``,
  pinned to ``forwarder``);
- ``head`` and ``segments``: the stored objects, base64;
- ``expect``: ``success`` (then ``result`` says what must come out) or ``failure`` (then
  ``reason`` is the EnvelopeError reason that must be raised).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wonders.crypto import (
    PrivateKey,
    RequestHead,
    ResponseHead,
    Sealed,
    new_request_id,
    open_request,
    seal_request,
    seal_response,
)
from wonders.crypto._envelope import KIND_REQUEST, _seal

HERE = Path(__file__).parent
NOW = 1_795_305_600.0
SKEW = 300.0


def _seed(label: str) -> bytes:
    return hashlib.sha256(b"wonders1 test vector " + label.encode()).digest()


KEYS = {
    name: PrivateKey.from_raw(name, _seed(name + " ed25519"), _seed(name + " x25519"))
    for name in ("fw1", "fw2", "gpu01", "gpu02", "gpu03")
}
FW, GPU01, GPU02 = KEYS["fw1"], KEYS["gpu01"], KEYS["gpu02"]


def eph(label: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(_seed("eph " + label))


def rid(n: int) -> str:
    return new_request_id(NOW, n.to_bytes(10, "big"))


HEAD = RequestHead(
    "POST", "https://api.example.com/v1/chat?x=1",
    (("Content-Type", "application/json"), ("X-Latin1", "caf\u00e9")),
)
BODY = b'{"model": "judge", "prompt": "Is 2+2=4?"}'
STREAM = [b"first segment ", b"second ", b"third and last"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def request(label: str, n: int = 1, sender: PrivateKey = GPU01, recipient: PrivateKey = FW,
            body: bytes | None = BODY, head: RequestHead = HEAD) -> Sealed:
    return seal_request(head, request_id=rid(n), sender=sender, recipient=recipient.public,
                        now=NOW, body=body, ephemeral=eph(label))


def streamed(label: str, n: int = 1) -> tuple[Sealed, list[bytes]]:
    sealed = request(label, n, body=None)
    assert sealed.body is not None
    return sealed, [sealed.body.seal(p) for p in STREAM] + [sealed.body.finish()]


def opened(sealed: Sealed) -> Any:
    senders = {k.kid: k.public for k in (GPU01, GPU02)}
    return open_request(sealed.data, recipient=FW, senders=senders, now=NOW)


def case(
    name: str, description: str, head: bytes, segments: list[bytes] | None = None, *,
    reason: str | None = None, result: dict[str, Any] | None = None, now: float = NOW,
    kind: str = "request", expected_sender: str | None = "gpu01", expected_id: str | None = None,
    response_to: Sealed | None = None,
) -> None:
    doc: dict[str, Any] = {
        "description": description,
        "expect": "failure" if reason else "success",
        "keys": {
            k.name: {"ed25519": _seed(k.name + " ed25519").hex(),
                     "x25519": _seed(k.name + " x25519").hex()}
            for k in KEYS.values()
        },
        "registered": ["gpu01", "gpu02"],
        "now": now,
        "skew": SKEW,
        "open": kind,
    }
    if kind == "request":
        doc["forwarder"] = "fw1"
        doc["expected_sender"] = expected_sender
        doc["expected_id"] = expected_id or rid(1)
    else:
        assert response_to is not None
        doc["client"] = "gpu01"
        doc["forwarder"] = "fw1"
        doc["request_id"] = response_to.id
        doc["request_digest"] = response_to.digest.hex()
    doc["head"] = b64(head)
    doc["segments"] = [b64(s) for s in segments or []]
    if reason:
        doc["reason"] = reason
    else:
        doc["result"] = result
    (HERE / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")


def request_result(body: bytes) -> dict[str, Any]:
    return {
        "method": HEAD.method, "url": HEAD.url, "headers": [list(h) for h in HEAD.headers],
        "body_sha256": hashlib.sha256(body).hexdigest(), "body_length": len(body),
    }


def main() -> None:
    for old in HERE.glob("*.json"):
        old.unlink()

    # ------------------------------------------------------------------ successes
    inline = request("inline")
    case("request-inline", "POST with a small body sealed inline in the head object",
         inline.data, result=request_result(BODY))
    case("request-empty-body", "GET with an empty inline body",
         request("empty", body=b"", head=RequestHead("GET", HEAD.url, HEAD.headers)).data,
         result={**request_result(b""), "method": "GET"})
    sealed, segments = streamed("streamed")
    case("request-streamed", "body streamed as three data segments and a trailer",
         sealed.data, segments, result=request_result(b"".join(STREAM)))

    response = seal_response(opened(inline), ResponseHead(200, "OK", (("X-A", "b"),)),
                             sender=FW, now=NOW, body=b"yes", ephemeral=eph("response"))
    ok_response = {"status": 200, "reason": "OK", "headers": [["X-A", "b"]],
                   "body_sha256": hashlib.sha256(b"yes").hexdigest(), "body_length": 3}
    case("response-inline", "response with an inline body, bound to request-inline",
         response.data, kind="response", response_to=inline, result=ok_response)
    streamed_response = seal_response(opened(inline), ResponseHead(200, "OK", (("X-A", "b"),)),
                                      sender=FW, now=NOW, body=None,
                                      ephemeral=eph("response-streamed"))
    assert streamed_response.body is not None
    response_segments = streamed_response.body.seal_all(b"yes", 1)
    case("response-streamed", "response body streamed one byte per segment",
         streamed_response.data, response_segments, kind="response", response_to=inline,
         result=ok_response)

    # ------------------------------------------------------------------- failures
    data = inline.data
    case("head-bit-flip-ciphertext", "one bit flipped in the head ciphertext",
         flip(data, 100), reason="tampered")
    case("head-bit-flip-check", "one bit flipped in the key check value",
         flip(data, 45), reason="wrong-recipient")
    case("head-bit-flip-ephemeral", "one bit flipped in the ephemeral public key",
         flip(data, 12), reason="wrong-recipient")
    case("head-bit-flip-kind", "the kind byte changed to 'response'",
         data[:8] + b"\x02" + data[9:], reason="malformed")
    case("head-bit-flip-length", "the head length field altered",
         flip(data, 57), reason="malformed")
    case("unsupported-version", "a future protocol version", b"wonders2" + data[8:],
         reason="unsupported")
    case("not-wonders", "an object that is not a wonders envelope", b"PK\x03\x04" + data[4:],
         reason="malformed")
    case("wrong-recipient", "sealed to another forwarder (fw2)",
         request("fw2", recipient=KEYS["fw2"]).data, reason="wrong-recipient")
    case("unknown-sender", "from gpu03, which the forwarder does not know",
         request("gpu03", sender=KEYS["gpu03"]).data, expected_sender=None,
         reason="unknown-sender")
    case("wrong-sender", "gpu02's own request, found in gpu01's mailbox",
         request("gpu02", sender=GPU02).data, reason="wrong-sender")
    doc = {"v": 1, "kind": "request", "id": rid(1), "sender": GPU01.kid, "recipient": FW.kid,
           "issued": int(NOW * 1000), "expires": int(NOW * 1000) + 300_000,
           "method": "GET", "url": HEAD.url, "headers": []}
    forged, _, _ = _seal(KIND_REQUEST, doc, sender=GPU02.signing,
                         recipient=FW.public.encryption, body=b"", ephemeral=eph("forged"))
    case("resigned-by-another-client", "names gpu01 as sender but is signed by gpu02",
         forged, reason="tampered")
    future, _, _ = _seal(KIND_REQUEST, {**doc, "v": 2}, sender=GPU01.signing,
                         recipient=FW.public.encryption, body=b"", ephemeral=eph("v2"))
    case("head-version-2", "a well-sealed head that declares envelope version 2",
         future, reason="unsupported")
    case("expired", "opened 601 s after issue: lifetime 300 s plus skew 300 s passed",
         data, now=NOW + 601, reason="expired")
    case("not-yet-valid", "opened 301 s before its issue time (skew 300 s)",
         data, now=NOW - 301, reason="not-yet-valid")
    case("stored-under-another-id", "a valid head copied under another request id",
         data, expected_id=rid(2), reason="not-bound")
    inline_cut = inline.data[:-5]
    case("inline-body-cut", "the inline body's last bytes cut off", inline_cut,
         reason="malformed")
    case("streamed-truncated", "the trailer segment is missing", sealed.data, segments[:-1],
         reason="truncated")
    case("streamed-reordered", "two data segments swapped", sealed.data,
         [segments[1], segments[0], *segments[2:]], reason="tampered")
    case("streamed-dropped", "a data segment dropped", sealed.data,
         [segments[0], *segments[2:]], reason="tampered")
    _, other_segments = streamed("streamed-other")
    case("streamed-spliced", "a data segment taken from another envelope of the same body",
         sealed.data, [segments[0], other_segments[1], *segments[2:]], reason="tampered")
    case("streamed-foreign-trailer", "the trailer of another envelope of the same body",
         sealed.data, [*segments[:-1], other_segments[-1]], reason="tampered")
    cut = request("error-trailer", body=None)
    assert cut.body is not None
    cut_segments = [cut.body.seal(b"partial"), cut.body.finish("response over 7 bytes")]
    case("streamed-error-trailer", "the sender ended the body with an error trailer",
         cut.data, cut_segments, reason="incomplete")
    second = request("second", n=2)
    case("response-not-bound", "response-inline opened against another request",
         response.data, kind="response", response_to=second, reason="not-bound")
    rogue_request = request("rogue", recipient=KEYS["fw2"])
    rogue = seal_response(
        open_request(rogue_request.data, recipient=KEYS["fw2"], senders={GPU01.kid: GPU01.public},
                     now=NOW),
        ResponseHead(200), sender=KEYS["fw2"], now=NOW, ephemeral=eph("rogue-response"))
    case("response-from-unpinned-forwarder", "a response signed by fw2; the client pins fw1",
         rogue.data, kind="response", response_to=rogue_request, reason="unknown-sender")


if __name__ == "__main__":
    main()
