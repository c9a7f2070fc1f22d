"""Sealing and opening requests and responses: behaviour and every rejection reason."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.crypto.conftest import NOW, read_body, rid
from wonders.crypto import (
    MAX_SEGMENT,
    OpenedRequest,
    PrivateKey,
    RequestHead,
    ResponseHead,
    Sealed,
    open_request,
    open_response,
    seal_request,
    seal_response,
)
from wonders.errors import EnvelopeError

HEAD = RequestHead(
    "POST",
    "https://api.example.com/v1/judge?q=secret-query",
    (("Authorization", "Bearer sk-very-secret"), ("X-Cafe", "cr\u00e8me"), ("X-Dup", "1"),
     ("X-Dup", "2")),
)


def _request(sender: PrivateKey, fw: PrivateKey, body: bytes | None = b"{}", n: int = 0) -> Sealed:
    return seal_request(HEAD, request_id=rid(n), sender=sender, recipient=fw.public, now=NOW,
                        body=body)


def _open(data: bytes, fw: PrivateKey, *clients: PrivateKey, **kw: object) -> OpenedRequest:
    return open_request(data, recipient=fw, senders={c.kid: c.public for c in clients}, now=NOW,
                        **kw)  # type: ignore[arg-type]


def _reason(info: pytest.ExceptionInfo[EnvelopeError]) -> str:
    return info.value.reason


# ------------------------------------------------------------------------ round trips


def test_request_round_trip_with_inline_body(fw: PrivateKey, gpu01: PrivateKey) -> None:
    sealed = _request(gpu01, fw, b'{"prompt": "hi"}')
    opened = _open(sealed.data, fw, gpu01, expected_sender=gpu01.kid, expected_id=sealed.id)
    assert opened.head == HEAD
    assert opened.body == b'{"prompt": "hi"}'
    assert opened.sender.kid == gpu01.kid
    assert opened.id == sealed.id
    assert opened.digest == sealed.digest
    assert opened.expires - opened.issued == pytest.approx(300)


def test_an_empty_request_body_opens_as_empty(fw: PrivateKey, gpu01: PrivateKey) -> None:
    assert _open(_request(gpu01, fw, b"").data, fw, gpu01).body == b""


def test_a_streamed_request_body_opens_whole_and_its_trailer_counts_it(
    fw: PrivateKey, gpu01: PrivateKey
) -> None:
    sealed = _request(gpu01, fw, body=None)
    assert sealed.body is not None
    parts = [b"a" * 1000, b"b", b"c" * 70000]
    segments = [sealed.body.seal(p) for p in parts] + [sealed.body.finish()]
    opened = _open(sealed.data, fw, gpu01)
    assert opened.body is None
    opener = opened.body_opener()
    assert read_body(opener, segments) == b"".join(parts)
    assert opener.trailer is not None
    assert opener.trailer.length == 71001
    assert opener.trailer.chunks == 3
    assert opener.trailer.sha256 == hashlib.sha256(b"".join(parts)).digest()


def test_a_streamed_response_opens_bound_to_its_request(fw: PrivateKey, gpu01: PrivateKey) -> None:
    request = _request(gpu01, fw)
    opened = _open(request.data, fw, gpu01)
    head = ResponseHead(200, "OK", (("Content-Type", "text/event-stream"),))
    response = seal_response(opened, head, sender=fw, now=NOW, body=None)
    assert response.body is not None
    segments = [response.body.seal(b"data: 1\n\n"), response.body.seal(b"data: 2\n\n"),
                response.body.finish()]
    got = open_response(response.data, recipient=gpu01, forwarder=fw.public, request=request,
                        now=NOW)
    assert got.head == head
    assert got.id == request.id
    assert read_body(got.body_opener(), segments) == b"data: 1\n\ndata: 2\n\n"


def test_an_inline_response_opens_with_its_status_and_body(
    fw: PrivateKey, gpu01: PrivateKey
) -> None:
    request = _request(gpu01, fw)
    response = seal_response(_open(request.data, fw, gpu01), ResponseHead(404, "Not Found"),
                             sender=fw, now=NOW, body=b"nope")
    got = open_response(response.data, recipient=gpu01, forwarder=fw.public, request=request,
                        now=NOW)
    assert (got.head.status, got.body) == (404, b"nope")


def test_inline_body_larger_than_one_segment(fw: PrivateKey, gpu01: PrivateKey) -> None:
    body = bytes(range(256)) * (MAX_SEGMENT // 256 + 5)
    assert _open(_request(gpu01, fw, body).data, fw, gpu01).body == body


def test_nothing_identifying_is_visible_in_stored_bytes(fw: PrivateKey, gpu01: PrivateKey) -> None:
    body = b"the body of the request"
    sealed = _request(gpu01, fw, body)
    response = seal_response(_open(sealed.data, fw, gpu01), ResponseHead(200, "OK"), sender=fw,
                             now=NOW, body=b"answer")
    secrets = [
        gpu01.kid, fw.kid, sealed.id, "api.example.com", "secret-query", "sk-very-secret",
        "Authorization", "POST", "judge", "the body", "answer",
    ]
    raw = [gpu01.public.signing_bytes, gpu01.public.encryption_bytes, fw.public.signing_bytes,
           fw.public.encryption_bytes, hashlib.sha256(body).digest(), sealed.digest]
    for blob in (sealed.data, response.data):
        for s in secrets:
            assert s.encode() not in blob
        for r in raw:
            for form in (r, r.hex().encode(), base64.b64encode(r), base64.b64encode(r[:24])):
                assert form not in blob


def test_every_seal_is_fresh(fw: PrivateKey, gpu01: PrivateKey) -> None:
    a, b = _request(gpu01, fw), _request(gpu01, fw)
    assert a.data != b.data
    assert a.digest != b.digest


# ------------------------------------------------------------------------ rejections


def test_a_request_from_an_unregistered_key_is_unknown_sender(
    fw: PrivateKey, gpu01: PrivateKey, gpu02: PrivateKey
) -> None:
    with pytest.raises(EnvelopeError) as info:
        _open(_request(gpu01, fw).data, fw, gpu02)
    assert _reason(info) == "unknown-sender"


def test_a_request_sealed_to_another_forwarder_is_wrong_recipient(
    fw: PrivateKey, gpu01: PrivateKey
) -> None:
    other_fw = PrivateKey.generate("fw2")
    with pytest.raises(EnvelopeError) as info:
        _open(_request(gpu01, other_fw).data, fw, gpu01)
    assert _reason(info) == "wrong-recipient"


def test_signed_by_another_registered_client_is_wrong_sender(
    fw: PrivateKey, gpu01: PrivateKey, gpu02: PrivateKey
) -> None:
    """gpu02 writes its own, validly signed request into gpu01's mailbox."""
    sealed = _request(gpu02, fw)
    with pytest.raises(EnvelopeError) as info:
        _open(sealed.data, fw, gpu01, gpu02, expected_sender=gpu01.kid)
    assert _reason(info) == "wrong-sender"


def test_a_head_copied_under_another_id_is_not_bound(fw: PrivateKey, gpu01: PrivateKey) -> None:
    with pytest.raises(EnvelopeError) as info:
        _open(_request(gpu01, fw).data, fw, gpu01, expected_id=rid(99))
    assert _reason(info) == "not-bound"


LIFETIME, SKEW = 300, 300


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        pytest.param(NOW + LIFETIME + SKEW + 1, "expired", id="past-expiry-beyond-skew"),
        pytest.param(NOW + LIFETIME + SKEW - 1, None, id="past-expiry-within-skew"),
        pytest.param(NOW - SKEW - 1, "not-yet-valid", id="issued-in-future-beyond-skew"),
        pytest.param(NOW - SKEW + 1, None, id="issued-in-future-within-skew"),
    ],
)
def test_a_request_opens_only_within_its_lifetime_give_or_take_the_skew(
    fw: PrivateKey, gpu01: PrivateKey, now: float, reason: str | None
) -> None:
    sealed = _request(gpu01, fw)
    senders = {gpu01.kid: gpu01.public}
    if reason is None:
        open_request(sealed.data, recipient=fw, senders=senders, now=now, skew=SKEW)
        return
    with pytest.raises(EnvelopeError) as info:
        open_request(sealed.data, recipient=fw, senders=senders, now=now, skew=SKEW)
    assert _reason(info) == reason


def test_response_to_another_request_is_not_bound(fw: PrivateKey, gpu01: PrivateKey) -> None:
    first, second = _request(gpu01, fw, n=1), _request(gpu01, fw, n=2)
    response = seal_response(_open(first.data, fw, gpu01), ResponseHead(200), sender=fw, now=NOW)
    with pytest.raises(EnvelopeError) as info:
        open_response(response.data, recipient=gpu01, forwarder=fw.public, request=second,
                      now=NOW)
    assert _reason(info) == "not-bound"


def test_a_response_from_an_unpinned_forwarder_is_unknown_sender(
    fw: PrivateKey, gpu01: PrivateKey
) -> None:
    rogue = PrivateKey.generate("rogue")
    request = _request(gpu01, rogue)
    response = seal_response(_open(request.data, rogue, gpu01), ResponseHead(200), sender=rogue,
                             now=NOW)
    with pytest.raises(EnvelopeError) as info:
        open_response(response.data, recipient=gpu01, forwarder=fw.public, request=request,
                      now=NOW)
    assert _reason(info) == "unknown-sender"


def test_a_request_is_not_a_response(fw: PrivateKey, gpu01: PrivateKey) -> None:
    request = _request(gpu01, fw)
    with pytest.raises(EnvelopeError, match="expected a response, got a request") as info:
        open_response(request.data, recipient=fw, forwarder=gpu01.public, request=request,
                      now=NOW)
    assert _reason(info) == "malformed"


def test_another_protocol_version_is_unsupported(fw: PrivateKey, gpu01: PrivateKey) -> None:
    data = _request(gpu01, fw).data
    with pytest.raises(EnvelopeError) as info:
        _open(b"wonders2" + data[8:], fw, gpu01)
    assert _reason(info) == "unsupported"


@pytest.mark.parametrize("data", [b"", b"wonders1", b"GET / HTTP/1.1\r\n\r\n" * 10])
def test_bytes_that_are_not_an_envelope_are_malformed(
    fw: PrivateKey, gpu01: PrivateKey, data: bytes
) -> None:
    with pytest.raises(EnvelopeError) as info:
        _open(data, fw, gpu01)
    assert _reason(info) == "malformed"


def test_streamed_body_without_trailer_is_truncated(fw: PrivateKey, gpu01: PrivateKey) -> None:
    sealed = _request(gpu01, fw, body=None)
    assert sealed.body is not None
    segments = [sealed.body.seal(b"x" * 10), sealed.body.seal(b"y" * 10)]
    opener = _open(sealed.data, fw, gpu01).body_opener()
    for segment in segments:
        opener.feed(segment)
    with pytest.raises(EnvelopeError) as info:
        opener.close()
    assert _reason(info) == "truncated"


def test_error_trailer_is_incomplete_never_a_clean_end(fw: PrivateKey, gpu01: PrivateKey) -> None:
    sealed = _request(gpu01, fw, body=None)
    assert sealed.body is not None
    segments = [sealed.body.seal(b"x" * 10), sealed.body.finish(error="response over 10 bytes")]
    opener = _open(sealed.data, fw, gpu01).body_opener()
    assert opener.feed(segments[0]) == b"x" * 10
    with pytest.raises(EnvelopeError, match="response over 10 bytes") as info:
        opener.feed(segments[1])
    assert _reason(info) == "incomplete"


def test_data_after_the_trailer_is_refused(fw: PrivateKey, gpu01: PrivateKey) -> None:
    sealed = _request(gpu01, fw, body=None)
    assert sealed.body is not None
    segments = [sealed.body.seal(b"x"), sealed.body.finish()]
    opener = _open(sealed.data, fw, gpu01).body_opener()
    read_body(opener, segments)
    with pytest.raises(EnvelopeError) as info:
        opener.feed(segments[0])
    assert _reason(info) == "malformed"


def test_opener_refuses_input_after_a_failure(fw: PrivateKey, gpu01: PrivateKey) -> None:
    sealed = _request(gpu01, fw, body=None)
    assert sealed.body is not None
    good = sealed.body.seal(b"x")
    opener = _open(sealed.data, fw, gpu01).body_opener()
    with pytest.raises(EnvelopeError):
        opener.feed(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(EnvelopeError):
        opener.feed(good)


def test_a_body_sealer_refuses_empty_oversized_and_late_segments(
    fw: PrivateKey, gpu01: PrivateKey
) -> None:
    sealed = _request(gpu01, fw, body=None)
    assert sealed.body is not None
    with pytest.raises(ValueError, match="1 to"):
        sealed.body.seal(b"")
    with pytest.raises(ValueError, match="1 to"):
        sealed.body.seal(b"x" * (MAX_SEGMENT + 1))
    sealed.body.finish()
    with pytest.raises(ValueError, match="already finished"):
        sealed.body.seal(b"x")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: RequestHead("GE T", "https://x/"), id="method"),
        pytest.param(lambda: RequestHead("GET", "/relative"), id="relative-url"),
        pytest.param(lambda: RequestHead("GET", "ftp://x/"), id="scheme"),
        pytest.param(lambda: RequestHead("GET", "https://x/", (("A", "b\r\nX: y"),)), id="crlf"),
        pytest.param(lambda: RequestHead("GET", "https://x/", (("A:", "b"),)), id="name"),
        pytest.param(lambda: RequestHead("GET", "https://x/", (("A", "\u4e2d"),)), id="non-latin1"),
        pytest.param(lambda: ResponseHead(99), id="status-low"),
        pytest.param(lambda: ResponseHead(600), id="status-high"),
    ],
)
def test_invalid_heads_cannot_be_built(make: object) -> None:
    with pytest.raises(ValueError, match="invalid"):
        make()  # type: ignore[operator]


def test_duplicate_json_members_are_malformed() -> None:
    """Two parsers that keep the first or the last duplicate would disagree on what was
    signed; a duplicate is refused outright."""
    from wonders.crypto._envelope import _strict_json

    with pytest.raises(EnvelopeError, match="duplicate key 'url'") as info:
        _strict_json(b'{"url": "https://a/", "url": "https://b/"}', "request head")
    assert _reason(info) == "malformed"


def test_a_long_error_message_still_reads_as_incomplete(fw: PrivateKey, gpu01: PrivateKey) -> None:
    sealed = _request(gpu01, fw, body=None)
    assert sealed.body is not None
    trailer = sealed.body.finish(error="limit \U0001f600\u00e9\x00" * 2000)  # escapes grow it
    opener = _open(sealed.data, fw, gpu01).body_opener()
    with pytest.raises(EnvelopeError, match="ended the body early: limit") as info:
        opener.feed(trailer)
    assert _reason(info) == "incomplete"
