"""Property tests: no alteration of stored objects ever opens.

Each test builds real envelopes (a request from gpu01 to the forwarder and the response
back), alters what a bucket reader could alter, and requires the opener to raise
EnvelopeError — for any body, any segmentation, any byte, any bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.crypto.conftest import NOW, read_body, rid
from wonders.crypto import (
    PrivateKey,
    RequestHead,
    ResponseHead,
    Sealed,
    open_request,
    open_response,
    seal_request,
    seal_response,
)
from wonders.crypto._envelope import KIND_REQUEST, _seal
from wonders.errors import EnvelopeError

FW = PrivateKey.generate("fw1")
GPU01 = PrivateKey.generate("gpu01")
GPU02 = PrivateKey.generate("gpu02")
SENDERS = {GPU01.kid: GPU01.public, GPU02.kid: GPU02.public}
HEAD = RequestHead("PUT", "https://hf.co/upload", (("Content-Type", "application/json"),))


@dataclass
class Envelope:
    """The stored objects of one envelope and how its rightful reader opens them."""

    objects: list[bytes]  # head object first, then body segments (none when inline)
    open: Callable[[list[bytes]], bytes]


def _segments(sealed: Sealed, body: bytes, size: int, streamed: bool) -> list[bytes]:
    if not streamed:
        return []
    assert sealed.body is not None
    return sealed.body.seal_all(body, size)


def make_request(body: bytes, size: int, streamed: bool, n: int = 0) -> tuple[Sealed, Envelope]:
    sealed = seal_request(HEAD, request_id=rid(n), sender=GPU01, recipient=FW.public, now=NOW,
                          body=None if streamed else body)
    segments = _segments(sealed, body, size, streamed)

    def open_(objects: list[bytes]) -> bytes:
        opened = open_request(objects[0], recipient=FW, senders=SENDERS, now=NOW,
                              expected_sender=GPU01.kid, expected_id=sealed.id)
        if opened.body is not None:
            if len(objects) > 1:
                raise EnvelopeError("malformed", "segments for an inline body")
            return opened.body
        return read_body(opened.body_opener(), objects[1:])

    return sealed, Envelope([sealed.data, *segments], open_)


def make_response(body: bytes, size: int, streamed: bool, n: int = 0) -> Envelope:
    request, _ = make_request(b"q", 1, False, n)
    opened = open_request(request.data, recipient=FW, senders=SENDERS, now=NOW)
    sealed = seal_response(opened, ResponseHead(200, "OK"), sender=FW, now=NOW,
                           body=None if streamed else body)
    segments = _segments(sealed, body, size, streamed)

    def open_(objects: list[bytes]) -> bytes:
        got = open_response(objects[0], recipient=GPU01, forwarder=FW.public, request=request,
                            now=NOW)
        if got.body is not None:
            if len(objects) > 1:
                raise EnvelopeError("malformed", "segments for an inline body")
            return got.body
        return read_body(got.body_opener(), objects[1:])

    return Envelope([sealed.data, *segments], open_)


bodies = st.binary(min_size=0, max_size=2048)
sizes = st.integers(min_value=1, max_value=700)
kinds = st.sampled_from(["request", "response"])


def build(kind: str, body: bytes, size: int, streamed: bool, n: int = 0) -> Envelope:
    if kind == "request":
        return make_request(body, size, streamed, n)[1]
    return make_response(body, size, streamed, n)


@given(kind=kinds, body=bodies, size=sizes, streamed=st.booleans())
def test_an_untouched_envelope_opens(kind: str, body: bytes, size: int, streamed: bool) -> None:
    envelope = build(kind, body, size, streamed)
    assert envelope.open(envelope.objects) == body


@settings(max_examples=400)
@given(kind=kinds, body=bodies, size=sizes, streamed=st.booleans(), data=st.data())
def test_flipping_any_bit_of_any_stored_object_fails(
    kind: str, body: bytes, size: int, streamed: bool, data: st.DataObject
) -> None:
    envelope = build(kind, body, size, streamed)
    which = data.draw(st.integers(0, len(envelope.objects) - 1), label="object")
    target = bytearray(envelope.objects[which])
    at = data.draw(st.integers(0, len(target) - 1), label="byte")
    target[at] ^= data.draw(st.integers(1, 255), label="mask")
    objects = list(envelope.objects)
    objects[which] = bytes(target)
    with pytest.raises(EnvelopeError):
        envelope.open(objects)


@settings(max_examples=200)
@given(kind=kinds, body=st.binary(min_size=2, max_size=2048), data=st.data())
def test_cutting_or_extending_any_stored_object_fails(
    kind: str, body: bytes, data: st.DataObject
) -> None:
    envelope = build(kind, body, 500, data.draw(st.booleans(), label="streamed"))
    which = data.draw(st.integers(0, len(envelope.objects) - 1), label="object")
    target = envelope.objects[which]
    if data.draw(st.booleans(), label="cut"):
        altered = target[: data.draw(st.integers(0, len(target) - 1), label="keep")]
    else:
        altered = target + data.draw(st.binary(min_size=1, max_size=40), label="extra")
    objects = list(envelope.objects)
    objects[which] = altered
    with pytest.raises(EnvelopeError):
        envelope.open(objects)


@settings(max_examples=300)
@given(
    kind=kinds,
    body=st.binary(min_size=1, max_size=2048),
    size=st.integers(1, 300),
    edit=st.sampled_from(["drop", "duplicate", "swap", "move-trailer", "truncate"]),
    data=st.data(),
)
def test_dropping_duplicating_or_reordering_segments_fails(
    kind: str, body: bytes, size: int, edit: str, data: st.DataObject
) -> None:
    envelope = build(kind, body, size, streamed=True)
    head, segments = envelope.objects[0], list(envelope.objects[1:])
    count = len(segments)  # data segments + trailer, at least 2
    i = data.draw(st.integers(0, count - 1), label="i")
    if edit == "drop":
        del segments[i]
    elif edit == "duplicate":
        segments.insert(i, segments[i])
    elif edit == "swap":
        j = data.draw(st.integers(0, count - 1).filter(lambda j: j != i), label="j")
        segments[i], segments[j] = segments[j], segments[i]
    elif edit == "move-trailer":
        segments.insert(min(i, count - 2), segments.pop())
    else:
        segments = segments[: min(i, count - 1)]
    with pytest.raises(EnvelopeError):
        envelope.open([head, *segments])


@settings(max_examples=200)
@given(kind=kinds, body=st.binary(min_size=1, max_size=1500), size=sizes, data=st.data())
def test_splicing_segments_of_two_envelopes_fails(
    kind: str, body: bytes, size: int, data: st.DataObject
) -> None:
    """Same sender, recipient, body and segmentation: only the envelopes' keys differ."""
    a, b = build(kind, body, size, True, n=1), build(kind, body, size, True, n=2)
    i = data.draw(st.integers(1, len(a.objects) - 1), label="segment")
    spliced = list(a.objects)
    spliced[i] = b.objects[i]
    with pytest.raises(EnvelopeError):
        a.open(spliced)


@pytest.mark.parametrize("kind", ["request", "response"])
def test_replacing_the_trailer_with_an_identical_bodys_trailer_fails(kind: str) -> None:
    a, b = build(kind, b"same body", 4, True, n=1), build(kind, b"same body", 4, True, n=2)
    with pytest.raises(EnvelopeError) as info:
        a.open([*a.objects[:-1], b.objects[-1]])
    assert info.value.reason == "tampered"


def test_heads_of_two_envelopes_cannot_be_swapped_over_their_bodies() -> None:
    a, b = build("request", b"x" * 50, 10, True, n=1), build("request", b"x" * 50, 10, True, n=1)
    with pytest.raises(EnvelopeError):
        a.open([b.objects[0], *a.objects[1:]])


def test_request_resigned_by_another_registered_client_fails() -> None:
    """gpu02 cannot pass off a request as gpu01's: claiming gpu01's kid, its signature
    fails; signing as itself, it is not the mailbox owner."""
    doc = {
        "v": 1, "kind": "request", "id": rid(5), "sender": GPU01.kid, "recipient": FW.kid,
        "issued": int(NOW * 1000), "expires": int(NOW * 1000) + 300_000,
        "method": "GET", "url": "https://hf.co/", "headers": [],
    }
    forged, _, _ = _seal(KIND_REQUEST, doc, sender=GPU02.signing, recipient=FW.public.encryption,
                         body=b"", ephemeral=None)
    with pytest.raises(EnvelopeError) as info:
        open_request(forged, recipient=FW, senders=SENDERS, now=NOW)
    assert info.value.reason == "tampered"

    own = seal_request(RequestHead("GET", "https://hf.co/"), request_id=rid(5), sender=GPU02,
                       recipient=FW.public, now=NOW)
    with pytest.raises(EnvelopeError) as info:
        open_request(own.data, recipient=FW, senders=SENDERS, now=NOW, expected_sender=GPU01.kid)
    assert info.value.reason == "wrong-sender"


@settings(max_examples=50)
@given(body=bodies, streamed=st.booleans())
def test_swapping_two_responses_fails(body: bytes, streamed: bool) -> None:
    first, _ = make_request(b"1", 1, False, n=1)
    second, _ = make_request(b"2", 1, False, n=2)
    responses = []
    for request in (first, second):
        opened = open_request(request.data, recipient=FW, senders=SENDERS, now=NOW)
        responses.append(seal_response(opened, ResponseHead(200), sender=FW, now=NOW,
                                       body=None if streamed else body))
    for request, response in ((first, responses[1]), (second, responses[0])):
        with pytest.raises(EnvelopeError) as info:
            open_response(response.data, recipient=GPU01, forwarder=FW.public, request=request,
                          now=NOW)
        assert info.value.reason == "not-bound"


@settings(max_examples=150)
@given(
    body=st.binary(min_size=3, max_size=1200),
    size=st.integers(1, 200),
    edit=st.sampled_from(["drop", "duplicate", "swap"]),
    data=st.data(),
)
def test_an_out_of_order_segment_is_refused_when_fed_not_only_at_the_end(
    body: bytes, size: int, edit: str, data: st.DataObject
) -> None:
    """Verification is in order, segment by segment: no plaintext of a misplaced segment
    is ever released, even before the trailer would catch it."""
    sealed, envelope = make_request(body, size, streamed=True)
    segments = list(envelope.objects[1:-1])  # data segments only
    if len(segments) < 2:
        return
    i = data.draw(st.integers(0, len(segments) - 2), label="i")
    if edit == "drop":
        del segments[i]
    elif edit == "duplicate":
        segments.insert(i + 1, segments[i])
    else:
        segments[i], segments[i + 1] = segments[i + 1], segments[i]
    if segments == list(envelope.objects[1:-1]):
        return  # swapping or duplicating identical segments changes nothing
    misplaced = i + 1 if edit == "duplicate" else i
    opener = open_request(sealed.data, recipient=FW, senders=SENDERS, now=NOW).body_opener()
    for segment in segments[:misplaced]:
        opener.feed(segment)
    with pytest.raises(EnvelopeError) as info:
        opener.feed(segments[misplaced])
    assert info.value.reason == "tampered"
