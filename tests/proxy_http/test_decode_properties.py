"""Coded answers decoded before they are scrubbed (tether.proxy.http.decode): any chunking
of a gzip or deflate body gives the body back, in bounded pieces; anything else fails with
DecodeError and nothing else; decoded and scrubbed, no form of the secret survives.
End to end (a real node and target): test_scrub.py."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.proxy.http.decode import (
    PIECE,
    BodyDecoder,
    DecodeError,
    codings,
    decodable,
    decoded_headers,
)
from tether.proxy.http.scrub import masker_for


def _code(coding: str, body: bytes, members: int = 1) -> bytes:
    if coding == "deflate":
        return zlib.compress(body)
    size = len(body) // members + 1
    return b"".join(gzip.compress(body[i : i + size]) for i in range(0, len(body), size)) or (
        gzip.compress(b"")
    )


def _feed(decoder: BodyDecoder, data: bytes, cuts: list[int]) -> list[bytes]:
    pieces, start = [], 0
    for cut in [*sorted(set(cuts)), len(data)]:
        pieces += list(decoder.feed(data[start:cut]))
        start = cut
    decoder.finish()
    return pieces


_BODY = st.one_of(st.binary(max_size=3000), st.sampled_from([b"", b"a" * 200_000]))


@settings(max_examples=300, deadline=None)
@given(
    coding=st.sampled_from(["gzip", "deflate"]),
    body=_BODY,
    members=st.integers(1, 4),
    cuts=st.lists(st.integers(0, 4000), max_size=12),
)
def test_any_chunking_gives_the_body_back_in_bounded_pieces(
    coding: str, body: bytes, members: int, cuts: list[int]
) -> None:
    coded = _code(coding, body, members)
    pieces = _feed(BodyDecoder(coding), coded, [c % (len(coded) + 1) for c in cuts])
    assert b"".join(pieces) == body
    assert all(0 < len(p) <= PIECE for p in pieces)


@settings(max_examples=500, deadline=None)
@given(
    coding=st.sampled_from(["gzip", "deflate"]),
    data=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda b, n, x: _code("gzip", b)[:n] + x,
            st.binary(max_size=80),
            st.integers(0, 120),
            st.binary(max_size=8),
        ),
        st.builds(lambda b, x: zlib.compress(b) + x, st.binary(max_size=80), st.binary(max_size=8)),
    ),
    cuts=st.lists(st.integers(0, 250), max_size=6),
)
def test_anything_decodes_or_fails_with_decode_error(
    coding: str, data: bytes, cuts: list[int]
) -> None:
    """Never another exception (the broker turns DecodeError into a cut answer, audited)."""
    try:
        _feed(BodyDecoder(coding), data, cuts)
    except DecodeError:
        return


@settings(max_examples=200, deadline=None)
@given(
    coding=st.sampled_from(["gzip", "deflate"]),
    parts=st.lists(
        st.one_of(st.binary(max_size=40), st.just(b"s3cr3t-key"), st.just(b"s3cr3t%2Dkey")),
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 600), max_size=8),
)
def test_decoded_then_scrubbed_no_form_survives(
    coding: str, parts: list[bytes], cuts: list[int]
) -> None:
    """What the agent gets is the decoded body masked at once: no chunking of the coded
    bytes can cut a secret so that it passes."""
    masker = masker_for([b"s3cr3t-key"])
    assert masker is not None
    body = b"".join(parts)
    coded = _code(coding, body, 2)
    scrubber = masker.scrubber()
    decoder = BodyDecoder(coding)
    out = [scrubber.feed(p) for p in _feed(decoder, coded, [c % (len(coded) + 1) for c in cuts])]
    sent = b"".join([*out, scrubber.flush()])
    assert sent == masker.whole(body)
    assert all(form not in sent for form in masker.needles)


def test_a_bomb_streams_in_pieces() -> None:
    """64 MiB of zeros in ~64 KiB of gzip: the first piece comes before the rest is
    decoded (the generator is lazy), and no piece is larger than PIECE."""
    coded = gzip.compress(bytes(64 << 20), compresslevel=9)
    assert len(coded) < 100_000
    pieces = BodyDecoder("gzip").feed(coded)
    first = next(pieces)
    assert len(first) == PIECE
    total = len(first)
    for piece in pieces:
        assert len(piece) <= PIECE
        total += len(piece)
    assert total == 64 << 20


@pytest.mark.parametrize(
    ("coding", "data", "why"),
    [
        ("gzip", gzip.compress(b"hello")[:-3], "truncated"),
        ("gzip", gzip.compress(b"hello") + b"\0\0\0\0", "does not decode"),
        ("gzip", gzip.compress(b"hello") + gzip.compress(b"x")[:5], "truncated"),
        ("deflate", zlib.compress(b"hello") + b"x", "bytes after its end"),
        ("deflate", gzip.compress(b"hello"), "does not decode"),  # not the zlib format
        ("gzip", zlib.compress(b"hello"), "does not decode"),
        ("gzip", b"not coded at all", "does not decode"),
    ],
)
def test_what_does_not_decode(coding: str, data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        _feed(BodyDecoder(coding), data, [])


def test_an_empty_body_and_several_members() -> None:
    assert _feed(BodyDecoder("gzip"), b"", []) == []
    two = gzip.compress(b"one ") + gzip.compress(b"two")
    assert b"".join(_feed(BodyDecoder("gzip"), two, [len(two) // 2])) == b"one two"
    with pytest.raises(ValueError, match="br"):
        BodyDecoder("br")


def test_which_codings_are_decoded() -> None:
    assert decodable([(b"Content-Encoding", b"GZIP")]) == "gzip"
    assert decodable([(b"content-encoding", b"x-gzip")]) == "gzip"
    assert decodable([(b"content-encoding", b"identity, deflate")]) == "deflate"
    for coding in (b"br", b"gzip, gzip", b"zstd", b"identity", b""):
        assert decodable([(b"content-encoding", coding)]) is None, coding
    assert decodable([(b"content-type", b"gzip")]) is None


def test_decoded_headers_no_longer_describe_the_coded_bytes() -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"Content-Encoding", b"gzip"),
        (b"content-length", b"31"),
        (b"Content-MD5", b"x"),
        (b"digest", b"sha-256=x"),
        (b"content-digest", b"sha-256=:x:"),
        (b"repr-digest", b"sha-256=:x:"),
        (b"etag", b'"abc"'),
        (b"vary", b"Accept-Encoding"),
    ]
    assert decoded_headers(headers) == [
        (b"content-type", b"application/json"),
        (b"etag", b'W/"abc"'),
        (b"vary", b"Accept-Encoding"),
    ]
    assert decoded_headers([(b"ETag", b'W/"abc"')]) == [(b"ETag", b'W/"abc"')]


_CODING = st.sampled_from(
    [b"gzip", b"GZip", b"x-gzip", b"deflate", b"identity", b"br", b"zstd", b"compress", b"",
     b" ", b"gzip;q=1", b"\tgzip", b"gzip\x00", b"id\xe9ntity"]
)  # fmt: skip
_HEADERS = st.lists(
    st.tuples(
        st.sampled_from([b"content-encoding", b"Content-Encoding", b"content_encoding",
                         b"content-type", b"transfer-encoding"]),
        st.lists(_CODING, max_size=3).map(lambda cs: b",".join(cs)),
    ),
    max_size=4,
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(headers=_HEADERS, status=st.sampled_from([200, 201, 206, 204, 304, 404]))
def test_no_coded_body_passes_unscanned(headers: list[tuple[bytes, bytes]], status: int) -> None:
    """Any Content-Encoding headers: a body the scrubber would see is either uncoded, or
    coded with exactly one coding the broker decodes first; everything else is refused."""
    from tether.proxy.http.scrub import unscannable

    refused = unscannable(b"GET", status, headers)
    coded = codings(headers)
    if refused is None and status not in (204, 304):
        assert not coded or (len(coded) == 1 and decodable(headers) is not None)
    if decodable(headers) is not None:
        assert len(coded) == 1
        BodyDecoder(decodable(headers) or "")  # always one the decoder takes
