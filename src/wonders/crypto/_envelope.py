"""Sealed envelopes: request and response heads, and body streams. Pure code, no I/O.

Theory of operation (the normative text is docs/PROTOCOL.md; keep the two in step):

* A **head object** is ``MAGIC ‖ KIND ‖ EPH ‖ CHECK ‖ LEN ‖ HEAD_CT [‖ inline segments]``.
  ``EPH`` is a fresh X25519 public key; ``HKDF-SHA256(X25519(eph, recipient), salt =
  EPH ‖ recipient_pub, info = "wonders1 keys" ‖ KIND)`` gives the head key, the body key and
  the 16-byte ``CHECK``. ``HEAD_CT`` is AES-256-GCM of ``SIGNATURE ‖ HEAD_JSON`` under the
  head key (nonce zero: the key is used once) with the 57 fixed bytes before ``LEN`` as AAD.
  The Ed25519 signature covers ``"wonders1 head\\0" ‖ KIND ‖ EPH ‖ recipient_pub ‖ HEAD_JSON``;
  the SHA-256 of those signed bytes is the **head digest**.
* A **body** is a STREAM of segments ``FLAG ‖ AES-256-GCM(body key, nonce = index(11) ‖ FLAG,
  plaintext, aad = head digest)``. Data segments carry ``FLAG = 0``; the last segment
  (``FLAG = 1``) is the signed **trailer**: total length, data-segment count, SHA-256 of the
  plaintext body and an optional error. Reordering, dropping, duplicating, splicing and
  truncating segments all fail to authenticate or end without a trailer.
* A **response** names the request's head digest and id in its signed head: opened against
  any other request it fails with ``not-bound``.
* Openers verify everything before they return: a head is returned only after decryption,
  signature, sender, binding and time checks; an inline body only after its trailer.
  Streamed segments are released one by one after their own authentication; the trailer
  check at the end decides whether the whole body is good (callers abort on failure).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from wonders.crypto._ids import ID_PATTERN
from wonders.crypto._keys import KID_PATTERN, PrivateKey, PublicBundle
from wonders.errors import EnvelopeError

__all__ = [
    "MAGIC",
    "MAX_HEAD_OBJECT",
    "MAX_INLINE",
    "MAX_SEGMENT",
    "MAX_SEGMENT_OBJECT",
    "PROTOCOL_VERSION",
    "BodyOpener",
    "BodySealer",
    "Headers",
    "OpenedRequest",
    "OpenedResponse",
    "RequestHead",
    "RequestRef",
    "ResponseHead",
    "Sealed",
    "Trailer",
    "open_request",
    "open_response",
    "seal_request",
    "seal_response",
]

PROTOCOL_VERSION: Final = "wonders1"
MAGIC: Final = b"wonders1"
KIND_REQUEST: Final = 0x01
KIND_RESPONSE: Final = 0x02
_KIND_NAMES: Final = {KIND_REQUEST: "request", KIND_RESPONSE: "response"}

#: Largest plaintext of one body segment.
MAX_SEGMENT: Final = 8 * 1024 * 1024
#: Largest head plaintext (signature + JSON); heads carry URLs and headers, not bodies.
MAX_HEAD: Final = 256 * 1024
MAX_TRAILER: Final = 4096

_FIXED = len(MAGIC) + 1 + 32 + 16  # bytes before LEN: the head's AAD
_TAG = 16
_SIG = 64
_FLAG_DATA: Final = 0x00
_FLAG_FINAL: Final = 0x01
#: Stored sizes, which a reader checks before it reads an object (``Store.get(max_bytes=)``).
#: The protocol lets an inline body be any length; wonders inlines at most MAX_INLINE bytes
#: (more is streamed), and a reader refuses a head object larger than that allows.
MAX_INLINE: Final = MAX_SEGMENT
#: A stored body segment: flag, ciphertext of at most MAX_SEGMENT bytes, tag.
MAX_SEGMENT_OBJECT: Final = 1 + MAX_SEGMENT + _TAG
#: A stored head: the fixed part, LEN, the sealed head, and an inline body of at most
#: MAX_INLINE bytes (one framed data segment and the framed trailer).
MAX_HEAD_OBJECT: Final = (_FIXED + 4 + MAX_HEAD + _TAG + 4 + MAX_SEGMENT_OBJECT
                          + 4 + 1 + MAX_TRAILER + _TAG)
_HEAD_SIG_DOMAIN: Final = b"wonders1 head\x00"
_TRAILER_SIG_DOMAIN: Final = b"wonders1 trailer\x00"
_KEYS_INFO: Final = b"wonders1 keys"
_ZERO_NONCE: Final = bytes(12)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00\r\n]")
_HEX64 = re.compile(r"[0-9a-f]{64}")

Headers = tuple[tuple[str, str], ...]
BodyMode = Literal["inline", "stream"]


def _fail(reason: str, message: str) -> EnvelopeError:
    return EnvelopeError(reason, message)


# ----------------------------------------------------------------------------- heads


def _latin1(text: str) -> bool:
    return max(text, default=" ") <= "\xff"


def _check_headers(headers: Headers) -> None:
    for item in headers:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValueError(f"header {item!r} is not a (name, value) pair")
        name, value = item
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        if not isinstance(value, str) or _BAD_VALUE.search(value) or not _latin1(value):
            raise ValueError(f"invalid value for header {name!r}")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What a request says, apart from its body.

    Attributes:
        method: the HTTP method token (``GET``, ``POST``, …).
        url: the absolute ``http://`` or ``https://`` URL.
        headers: ``(name, value)`` pairs in order; values are byte strings decoded as latin-1.
    """

    method: str
    url: str
    headers: Headers = ()

    def __post_init__(self) -> None:
        if not _TOKEN.fullmatch(self.method):
            raise ValueError(f"invalid method {self.method!r}")
        if not self.url.startswith(("http://", "https://")) or _BAD_VALUE.search(self.url):
            raise ValueError(f"invalid URL {self.url!r}: must be absolute http:// or https://")
        _check_headers(self.headers)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What a response says, apart from its body."""

    status: int
    reason: str = ""
    headers: Headers = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.status, int) and 100 <= self.status <= 599):
            raise ValueError(f"invalid status {self.status!r}")
        if _BAD_VALUE.search(self.reason) or not _latin1(self.reason):
            raise ValueError(f"invalid reason phrase {self.reason!r}")
        _check_headers(self.headers)


@dataclass(frozen=True, slots=True)
class Trailer:
    """The verified end of a body stream."""

    length: int
    chunks: int
    sha256: bytes
    error: str | None = None


# --------------------------------------------------------------------- key schedule


@dataclass(frozen=True, slots=True)
class _Keys:
    head: bytes
    body: bytes
    check: bytes


def _schedule(shared: bytes, eph_pub: bytes, recipient_pub: bytes, kind: int) -> _Keys:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=80,
        salt=eph_pub + recipient_pub,
        info=_KEYS_INFO + bytes([kind]),
    ).derive(shared)
    return _Keys(head=okm[:32], body=okm[32:64], check=okm[64:80])


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


# ------------------------------------------------------------------------ body stream


def _nonce(index: int, flag: int) -> bytes:
    return index.to_bytes(11, "big") + bytes([flag])


def _trailer_json(length: int, chunks: int, digest: bytes, error: str | None) -> bytes:
    doc = {"length": length, "chunks": chunks, "sha256": digest.hex(), "error": error}
    return json.dumps(doc, separators=(",", ":")).encode()


class BodySealer:
    """Seals a body as a stream of segments; one instance per body, used in order.

    ``seal(data)`` returns the stored bytes of the next data segment (1 to MAX_SEGMENT
    plaintext bytes); ``finish()`` returns the signed trailer segment, after which the
    sealer refuses more input. ``finish(error=...)`` ends a body that is not complete
    (for example cut at a size limit): the reader then fails with ``incomplete``.
    """

    def __init__(self, body_key: bytes, head_digest: bytes, signer: Ed25519PrivateKey) -> None:
        self._aead = AESGCM(body_key)
        self._aad = head_digest
        self._signer = signer
        self._index = 0
        self._length = 0
        self._hash = hashlib.sha256()
        self._finished = False

    @property
    def length(self) -> int:
        """Plaintext bytes sealed so far."""
        return self._length

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the plaintext sealed so far (of the whole body, once finished)."""
        return self._hash.copy().digest()

    def seal(self, data: bytes | memoryview) -> bytes:
        """Seal the next data segment; ``data`` may be a memoryview (it is not kept)."""
        if self._finished:
            raise ValueError("body already finished")
        if not 0 < len(data) <= MAX_SEGMENT:
            raise ValueError(f"a data segment holds 1 to {MAX_SEGMENT} bytes, not {len(data)}")
        self._hash.update(data)
        self._length += len(data)
        ct = self._aead.encrypt(_nonce(self._index, _FLAG_DATA), data, self._aad)  # type: ignore[arg-type]
        self._index += 1
        return bytes([_FLAG_DATA]) + ct

    def finish(self, error: str | None = None) -> bytes:
        if self._finished:
            raise ValueError("body already finished")
        self._finished = True
        digest = self._hash.digest()
        body = _trailer_json(self._length, self._index, digest, error)
        while error and len(body) > MAX_TRAILER - _SIG:  # JSON escapes can be 12 bytes a char
            error = error[: len(error) // 2]
            body = _trailer_json(self._length, self._index, digest, error)
        sig = self._signer.sign(_TRAILER_SIG_DOMAIN + self._aad + body)
        ct = self._aead.encrypt(_nonce(self._index, _FLAG_FINAL), sig + body, self._aad)
        return bytes([_FLAG_FINAL]) + ct

    def seal_all(self, body: bytes, segment_size: int = MAX_SEGMENT) -> list[bytes]:
        """Every segment of a body known in full, trailer included."""
        step = segment_size
        return [self.seal(body[i : i + step]) for i in range(0, len(body), step)] + [self.finish()]


class BodyOpener:
    """Opens a body stream segment by segment, in order, with bounded memory.

    ``feed(segment)`` returns the plaintext of a data segment once it authenticates, or
    ``b""`` for the trailer, which it verifies (signature, length, count, SHA-256); after
    that ``done`` is true and ``trailer`` is set. ``close()`` raises ``truncated`` if the
    trailer never came. Any failure raises :class:`EnvelopeError`; after one, the opener
    refuses further input.
    """

    def __init__(self, body_key: bytes, head_digest: bytes, sender: Ed25519PublicKey) -> None:
        self._aead = AESGCM(body_key)
        self._aad = head_digest
        self._sender = sender
        self._index = 0
        self._length = 0
        self._hash = hashlib.sha256()
        self._failed = False
        self.trailer: Trailer | None = None

    @property
    def done(self) -> bool:
        return self.trailer is not None

    def feed(self, segment: bytes) -> bytes:
        if self._failed:
            raise _fail("tampered", "body stream already failed verification")
        try:
            return self._feed(segment)
        except EnvelopeError:
            self._failed = True
            raise

    def _feed(self, segment: bytes) -> bytes:
        if self.trailer is not None:
            raise _fail("malformed", "data after the final segment of the body")
        if len(segment) < 1 + _TAG or len(segment) > 1 + MAX_SEGMENT + _TAG:
            raise _fail("malformed", f"body segment {self._index} has an impossible size")
        flag = segment[0]
        if flag not in (_FLAG_DATA, _FLAG_FINAL):
            raise _fail("malformed", f"body segment {self._index} has an unknown flag")
        try:
            # decrypt() takes any buffer (the stub says bytes): no copy of the segment
            ct = memoryview(segment)[1:]
            plain = self._aead.decrypt(_nonce(self._index, flag), ct, self._aad)  # type: ignore[arg-type]
        except InvalidTag:
            raise _fail(
                "tampered",
                f"body segment {self._index} does not authenticate "
                "(altered, reordered, dropped or from another body)",
            ) from None
        if flag == _FLAG_DATA:
            if not plain:
                raise _fail("malformed", f"body segment {self._index} is empty")
            self._index += 1
            self._length += len(plain)
            self._hash.update(plain)
            return plain
        self.trailer = self._check_trailer(plain)
        if self.trailer.error is not None:
            raise _fail("incomplete", f"the sender ended the body early: {self.trailer.error}")
        return b""

    def _check_trailer(self, plain: bytes) -> Trailer:
        if len(plain) > MAX_TRAILER or len(plain) < _SIG:
            raise _fail("malformed", "trailer has an impossible size")
        sig, body = plain[:_SIG], plain[_SIG:]
        try:
            self._sender.verify(sig, _TRAILER_SIG_DOMAIN + self._aad + body)
        except InvalidSignature:
            raise _fail("tampered", "trailer signature does not verify") from None
        doc = _strict_json(body, "trailer")
        length, chunks = doc.get("length"), doc.get("chunks")
        digest, error = doc.get("sha256"), doc.get("error")
        if (
            not _is_int(length)
            or not _is_int(chunks)
            or not (isinstance(digest, str) and _HEX64.fullmatch(digest))
            or not (error is None or isinstance(error, str))
        ):
            raise _fail("malformed", "trailer fields are missing or of the wrong type")
        if error is None and (
            length != self._length
            or chunks != self._index
            or not hmac.compare_digest(bytes.fromhex(digest), self._hash.digest())
        ):
            raise _fail(
                "tampered",
                f"body does not match its trailer (got {self._length} bytes in "
                f"{self._index} segments, trailer says {length} in {chunks})",
            )
        return Trailer(doc["length"], doc["chunks"], bytes.fromhex(digest), error)

    def close(self) -> Trailer:
        """Return the trailer; raise ``truncated`` if the stream ended without one."""
        if self.trailer is None:
            self._failed = True
            raise _fail("truncated", f"body ended after {self._index} segments without a trailer")
        return self.trailer


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _strict_json(data: bytes, what: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for key, value in pairs:
            if key in doc:
                raise ValueError(f"duplicate key {key!r}")
            doc[key] = value
        return doc

    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail("malformed", f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail("malformed", f"{what} is not a JSON object")
    return doc


# ---------------------------------------------------------------------------- sealing


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed head, ready to store.

    Attributes:
        id: the request id (a response carries its request's id).
        data: the bytes of the head object (with the whole body inline, if it was given).
        digest: the head digest; a response to this request must name it.
        body: for a streamed body, the sealer of its segments (``body/0``, ``body/1``, …,
            the trailer last); ``None`` when the body is inline.
    """

    id: str
    data: bytes
    digest: bytes
    body: BodySealer | None = field(default=None, repr=False)


def _seal(
    kind: int,
    doc: dict[str, Any],
    *,
    sender: Ed25519PrivateKey,
    recipient: X25519PublicKey,
    body: bytes | None,
    ephemeral: X25519PrivateKey | None,
) -> tuple[bytes, bytes, BodySealer | None]:
    eph = ephemeral or X25519PrivateKey.generate()
    eph_pub, recipient_pub = _raw(eph.public_key()), _raw(recipient)
    keys = _schedule(eph.exchange(recipient), eph_pub, recipient_pub, kind)
    doc = {**doc, "body": "inline" if body is not None else "stream"}
    head_json = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    signed = _HEAD_SIG_DOMAIN + bytes([kind]) + eph_pub + recipient_pub + head_json
    digest = hashlib.sha256(signed).digest()
    fixed = MAGIC + bytes([kind]) + eph_pub + keys.check
    plain = sender.sign(signed) + head_json
    if len(plain) > MAX_HEAD:
        raise ValueError(f"head is {len(plain)} bytes; the limit is {MAX_HEAD}")
    head_ct = AESGCM(keys.head).encrypt(_ZERO_NONCE, plain, fixed)
    parts = [fixed, struct.pack(">I", len(head_ct)), head_ct]
    sealer = BodySealer(keys.body, digest, sender)
    if body is None:
        return b"".join(parts), digest, sealer
    for segment in sealer.seal_all(body):
        parts += [struct.pack(">I", len(segment)), segment]
    return b"".join(parts), digest, None


def _times(now: float, lifetime: float) -> tuple[int, int]:
    issued = int(now * 1000)
    return issued, issued + int(lifetime * 1000)


def seal_request(
    head: RequestHead,
    *,
    request_id: str,
    sender: PrivateKey,
    recipient: PublicBundle,
    now: float,
    lifetime: float = 300.0,
    body: bytes | None = b"",
    ephemeral: X25519PrivateKey | None = None,
) -> Sealed:
    """Seal a request from ``sender`` to ``recipient`` (the forwarder).

    ``body`` bytes are sealed inline in the head object (keep that for small bodies);
    ``body=None`` means a streamed body: store the segments of ``Sealed.body`` as
    ``body/<n>`` objects before the head. ``ephemeral`` is for test vectors only.
    """
    if not ID_PATTERN.fullmatch(request_id):
        raise ValueError(f"not a request id: {request_id!r}")
    issued, expires = _times(now, lifetime)
    doc = {
        "v": 1,
        "kind": "request",
        "id": request_id,
        "sender": sender.kid,
        "recipient": recipient.kid,
        "issued": issued,
        "expires": expires,
        "method": head.method,
        "url": head.url,
        "headers": [list(h) for h in head.headers],
    }
    data, digest, sealer = _seal(
        KIND_REQUEST, doc, sender=sender.signing, recipient=recipient.encryption,
        body=body, ephemeral=ephemeral,
    )
    return Sealed(request_id, data, digest, sealer)


def seal_response(
    request: OpenedRequest,
    head: ResponseHead,
    *,
    sender: PrivateKey,
    now: float,
    lifetime: float = 300.0,
    body: bytes | None = b"",
    ephemeral: X25519PrivateKey | None = None,
) -> Sealed:
    """Seal the response to an opened request, from ``sender`` (the forwarder) to the
    request's sender, bound to the request's head digest and id."""
    issued, expires = _times(now, lifetime)
    doc = {
        "v": 1,
        "kind": "response",
        "id": request.id,
        "request": request.digest.hex(),
        "sender": sender.kid,
        "recipient": request.sender.kid,
        "issued": issued,
        "expires": expires,
        "status": head.status,
        "reason": head.reason,
        "headers": [list(h) for h in head.headers],
    }
    data, digest, sealer = _seal(
        KIND_RESPONSE, doc, sender=sender.signing, recipient=request.sender.encryption,
        body=body, ephemeral=ephemeral,
    )
    return Sealed(request.id, data, digest, sealer)


# ---------------------------------------------------------------------------- opening


Lookup = Callable[[str], PublicBundle | None]
#: Kind-specific checks run after the signature verifies (docs/PROTOCOL.md §7, rules 10-11).
Binding = Callable[[dict[str, Any], PublicBundle], None]


@dataclass(frozen=True, slots=True)
class _Opened:
    doc: dict[str, Any]
    head: RequestHead | ResponseHead
    sender: PublicBundle
    digest: bytes
    body_key: bytes
    inline: bytes | None


def _split_inline(data: bytes, offset: int) -> Iterator[bytes]:
    while offset < len(data):
        if offset + 4 > len(data):
            raise _fail("malformed", "inline body framing is cut short")
        (size,) = struct.unpack_from(">I", data, offset)
        offset += 4
        if size > 1 + MAX_SEGMENT + _TAG or offset + size > len(data):
            raise _fail("malformed", "inline body segment overruns the object")
        yield data[offset : offset + size]
        offset += size


def _open(
    data: bytes,
    kind: int,
    recipient: PrivateKey,
    lookup: Lookup,
    bind: Binding,
    now: float,
    skew: float | None,
) -> _Opened:
    """Apply the rules of docs/PROTOCOL.md §7, in its order."""
    name = _KIND_NAMES[kind]
    # 1-3: framing
    if len(data) < _FIXED + 4:
        raise _fail("malformed", f"{len(data)} bytes is too short for a {name} head")
    if data[: len(MAGIC)] != MAGIC:
        if data[:7] == MAGIC[:7]:
            raise _fail("unsupported", f"protocol {data[:8]!r}; this peer speaks {MAGIC!r}")
        raise _fail("malformed", "not a wonders object (bad magic)")
    if data[8] != kind:
        got = _KIND_NAMES.get(data[8], f"kind {data[8]:#04x}")
        raise _fail("malformed", f"expected a {name}, got a {got}")
    eph_pub, check = data[9:41], data[41:57]
    (head_len,) = struct.unpack_from(">I", data, _FIXED)
    body_start = _FIXED + 4 + head_len
    if head_len < _TAG + _SIG or head_len > MAX_HEAD + _TAG or body_start > len(data):
        raise _fail("malformed", "head length field is impossible")
    try:
        shared = recipient.encryption.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError:
        raise _fail("malformed", "ephemeral key is not a usable X25519 point") from None
    # 4-5: key check and decryption
    recipient_pub = recipient.public.encryption_bytes
    keys = _schedule(shared, eph_pub, recipient_pub, kind)
    if not hmac.compare_digest(keys.check, check):
        raise _fail("wrong-recipient", f"{name} was not sealed to key {recipient.kid}")
    try:
        plain = AESGCM(keys.head).decrypt(
            _ZERO_NONCE, data[_FIXED + 4 : body_start], data[:_FIXED]
        )
    except InvalidTag:
        raise _fail("tampered", f"{name} head does not authenticate") from None
    # 6: members
    sig, head_json = plain[:_SIG], plain[_SIG:]
    doc = _strict_json(head_json, f"{name} head")
    head = _check_members(doc, name)
    # 7-9: recipient, sender, signature
    if doc["recipient"] != recipient.kid:
        raise _fail("wrong-recipient", f"{name} names recipient {doc['recipient']}")
    sender = lookup(doc["sender"])
    if sender is None or sender.kid != doc["sender"]:
        raise _fail("unknown-sender", f"{name} is from unknown key {doc['sender']}")
    signed = _HEAD_SIG_DOMAIN + bytes([kind]) + eph_pub + recipient_pub + head_json
    try:
        sender.signing.verify(sig, signed)
    except InvalidSignature:
        raise _fail(
            "tampered", f"{name} signature does not verify with {sender.name}'s key"
        ) from None
    digest = hashlib.sha256(signed).digest()
    # 10-11: mailbox owner and binding
    bind(doc, sender)
    # 12-13: time
    issued, expires = doc["issued"] / 1000, doc["expires"] / 1000
    if skew is None:
        pass  # the caller decides about time (to answer an authenticated, expired request)
    elif now + skew < issued:
        raise _fail("not-yet-valid", f"{name} issued {issued - now:.0f} s in the future")
    elif now - skew > expires:
        raise _fail("expired", f"{name} expired {now - expires:.0f} s ago")
    # 14: body
    inline: bytes | None = None
    if doc["body"] == "stream":
        if body_start != len(data):
            raise _fail("malformed", "bytes after a head whose body is streamed")
    else:
        opener = BodyOpener(keys.body, digest, sender.signing)
        inline = b"".join(opener.feed(seg) for seg in _split_inline(data, body_start))
        opener.close()
    return _Opened(doc, head, sender, digest, keys.body, inline)


def _check_members(doc: dict[str, Any], name: str) -> RequestHead | ResponseHead:
    """Rule 6: every member present, well typed and valid; returns the HTTP part."""

    def bad(what: str) -> EnvelopeError:
        return _fail("malformed", f"{name} head: {what}")

    if doc.get("v") != 1:
        raise _fail("unsupported", f"{name} head version {doc.get('v')!r}")
    if doc.get("kind") != name:
        raise bad(f"kind is {doc.get('kind')!r}")
    if not (isinstance(doc.get("id"), str) and ID_PATTERN.fullmatch(doc["id"])):
        raise bad("missing or invalid id")
    for key in ("sender", "recipient"):
        if not (isinstance(doc.get(key), str) and KID_PATTERN.fullmatch(doc[key])):
            raise bad(f"missing or invalid {key}")
    if not (_is_int(doc.get("issued")) and _is_int(doc.get("expires"))):
        raise bad("missing or invalid issued/expires")
    if doc["expires"] < doc["issued"]:
        raise bad("expires before it is issued")
    if doc.get("body") not in ("inline", "stream"):
        raise bad("body must be 'inline' or 'stream'")
    raw_headers = doc.get("headers")
    if not (
        isinstance(raw_headers, list)
        and all(isinstance(h, list) and len(h) == 2 for h in raw_headers)
    ):
        raise bad("headers must be a list of [name, value] pairs")
    headers = tuple((h[0], h[1]) for h in raw_headers)
    try:
        if name == "request":
            return RequestHead(doc.get("method"), doc.get("url"), headers)  # type: ignore[arg-type]
        request = doc.get("request")
        if not (isinstance(request, str) and _HEX64.fullmatch(request)):
            raise ValueError("missing or invalid request digest")
        return ResponseHead(doc.get("status"), doc.get("reason"), headers)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise bad(str(exc)) from None


def _lookup(senders: Mapping[str, PublicBundle] | Lookup) -> Lookup:
    return senders.get if isinstance(senders, Mapping) else senders


@dataclass(frozen=True, slots=True)
class OpenedRequest:
    """A verified request.

    Attributes:
        id: the request id (signed; matches the mailbox key it was stored under).
        sender: the registered client that signed it.
        issued, expires: Unix seconds.
        head: method, URL and headers.
        digest: the head digest a response must name.
        body: the verified inline body, or ``None`` for a streamed body (use
            :meth:`body_opener` on the ``body/<n>`` objects).
    """

    id: str
    sender: PublicBundle
    issued: float
    expires: float
    head: RequestHead
    digest: bytes
    body: bytes | None
    _body_key: bytes = field(repr=False)

    def body_opener(self) -> BodyOpener:
        return BodyOpener(self._body_key, self.digest, self.sender.signing)


class RequestRef(Protocol):
    """What a client keeps of a request it sent: its id and head digest (a :class:`Sealed`)."""

    @property
    def id(self) -> str: ...

    @property
    def digest(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class OpenedResponse:
    """A verified response, bound to its request (see :class:`OpenedRequest`)."""

    id: str
    sender: PublicBundle
    issued: float
    expires: float
    head: ResponseHead
    digest: bytes
    body: bytes | None
    _body_key: bytes = field(repr=False)

    def body_opener(self) -> BodyOpener:
        return BodyOpener(self._body_key, self.digest, self.sender.signing)


def open_request(
    data: bytes,
    *,
    recipient: PrivateKey,
    senders: Mapping[str, PublicBundle] | Lookup,
    now: float,
    skew: float = 300.0,
    expected_sender: str | None = None,
    expected_id: str | None = None,
    check_time: bool = True,
) -> OpenedRequest:
    """Open and verify a request head (and its inline body).

    ``senders`` maps registered key ids to bundles. ``expected_sender`` (a key id) and
    ``expected_id`` are what the mailbox key says (``requests/<client>/<id>/head``): a head
    signed by another registered client, or copied under another id, is refused.
    ``check_time=False`` skips rules 12-13 only: a forwarder uses it to answer an
    authenticated request that arrived expired, never to execute one.
    """

    def bind(doc: dict[str, Any], sender: PublicBundle) -> None:
        if expected_sender is not None and sender.kid != expected_sender:
            raise _fail(
                "wrong-sender", f"request signed by {sender.name}, not the mailbox owner"
            )
        if expected_id is not None and doc["id"] != expected_id:
            raise _fail("not-bound", f"request id {doc['id']} stored under id {expected_id}")

    opened = _open(
        data, KIND_REQUEST, recipient, _lookup(senders), bind, now, skew if check_time else None
    )
    assert isinstance(opened.head, RequestHead)
    doc = opened.doc
    return OpenedRequest(
        doc["id"], opened.sender, doc["issued"] / 1000, doc["expires"] / 1000, opened.head,
        opened.digest, opened.inline, opened.body_key,
    )


def open_response(
    data: bytes,
    *,
    recipient: PrivateKey,
    forwarder: PublicBundle,
    request: RequestRef,
    now: float,
    skew: float = 300.0,
) -> OpenedResponse:
    """Open and verify the response to ``request`` (the :class:`Sealed` request this client
    stored, or anything with its ``id`` and ``digest``), from the pinned ``forwarder``."""

    def bind(doc: dict[str, Any], sender: PublicBundle) -> None:
        digest = bytes.fromhex(doc["request"])
        if not hmac.compare_digest(digest, request.digest) or doc["id"] != request.id:
            raise _fail("not-bound", f"response to request {doc['id']}, not to {request.id}")

    def pinned(kid: str) -> PublicBundle | None:
        return forwarder if kid == forwarder.kid else None

    opened = _open(data, KIND_RESPONSE, recipient, pinned, bind, now, skew)
    assert isinstance(opened.head, ResponseHead)
    doc = opened.doc
    return OpenedResponse(
        doc["id"], opened.sender, doc["issued"] / 1000, doc["expires"] / 1000, opened.head,
        opened.digest, opened.inline, opened.body_key,
    )
