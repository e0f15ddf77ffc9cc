"""The streaming scrubber (tether.proxy.http.scrub): for any secrets, any body and any
chunking, the output is the body masked at once, as long, and never holds a form."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.proxy.http.scrub import Masker, forms, masker_for, request_headers, unscannable

# Small alphabets so that secrets overlap, repeat, share prefixes and hold the mask byte.
_SECRET = st.binary(min_size=1, max_size=10).map(lambda b: bytes(b"ab*%/"[x % 5] for x in b))
_SECRETS = st.lists(_SECRET, min_size=1, max_size=3)


def _stream(masker: Masker, body: bytes, cuts: list[int]) -> tuple[bytes, int]:
    """``body`` fed in the pieces ``cuts`` make; (the output, the most bytes held)."""
    scrubber = masker.scrubber()
    out, held, start, sent = [], 0, 0, 0
    for cut in [*sorted(set(cuts)), len(body)]:
        piece = scrubber.feed(body[start:cut])
        out.append(piece)
        start, sent = cut, sent + len(piece)
        held = max(held, start - sent)
    out.append(scrubber.flush())
    return b"".join(out), held


@st.composite
def _cases(draw: st.DrawFn) -> tuple[Masker, bytes, list[int]]:
    secrets = draw(_SECRETS)
    masker = masker_for(secrets)
    assert masker is not None
    parts = st.one_of(st.binary(max_size=6).map(lambda b: bytes(b"ab*%/x" [x % 6] for x in b)),
                      st.sampled_from(masker.needles),
                      st.sampled_from(masker.needles).map(lambda n: n[: len(n) // 2]))  # fmt: skip
    body = b"".join(draw(st.lists(parts, max_size=12)))
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=8))
    return masker, body, cuts


@settings(max_examples=600, deadline=None)
@given(_cases())
def test_any_chunking_gives_the_whole_body_masked(case: tuple[Masker, bytes, list[int]]) -> None:
    masker, body, cuts = case
    out, held = _stream(masker, body, cuts)
    assert out == masker.whole(body)
    assert len(out) == len(body)
    for needle in masker.needles:
        assert needle not in out
    assert held <= masker.longest - 1  # constant memory: never more than a form less a byte
    assert masker.mask not in b"".join(masker.needles)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=10))
def test_bytes_without_a_secret_pass_unchanged(body: bytes, cuts: list[int]) -> None:
    masker = masker_for([b"\xfe\xfd-secret-\xfc"])
    assert masker is not None
    body = body.replace(b"\xfe\xfd-secret-\xfc", b"")
    out, _ = _stream(masker, body, [c for c in cuts if c <= len(body)])
    assert out == body


def test_forms_an_echo_may_show() -> None:
    secret = b'p@ss word&="\\/\xc3\xa9'
    shown = forms(secret)
    assert secret in shown
    assert quote(secret, safe="").encode() in shown  # as sent in a query
    assert b"p%40ss+word%26%3D%22%5C%2F%C3%A9" in shown  # form-encoded
    assert b"p%40ss%20word%26%3d%22%5c%2f%c3%a9" in shown  # lower-case hex
    assert json.dumps(secret.decode())[1:-1].encode() in shown  # \u00e9
    assert b'p@ss word&=\\"\\\\\\/\\u00e9' in shown  # PHP's json_encode escapes '/'
    assert b'p@ss word&=\\"\\\\\\/\xc3\xa9' in shown  # ... with JSON_UNESCAPED_UNICODE
    assert b"p@ss word&amp;=&quot;\\/\xc3\xa9" in shown  # in an HTML page
    assert b"" not in forms(b"")


def test_a_masker_covers_basic_pairs_and_the_password() -> None:
    pair = base64.b64encode(b"svc:hunter2-long")
    masker = masker_for([pair, b"hunter2-long"])
    assert masker is not None
    scrubber = masker.scrubber()
    body = b"Authorization: Basic " + pair + b"\npassword=hunter2-long\n"
    assert scrubber.feed(body) + scrubber.flush() == (
        b"Authorization: Basic " + b"*" * len(pair) + b"\npassword=" + b"*" * 12 + b"\n"
    )
    assert scrubber.count == 2
    assert masker_for([]) is None and masker_for([b""]) is None


def test_only_the_end_that_begins_a_secret_is_held() -> None:
    """A body that does not end like a secret goes out at once (SSE, JSON lines)."""
    masker = masker_for([b"abcdef"])
    assert masker is not None
    scrubber = masker.scrubber()
    assert scrubber.feed(b"data: x\n\n") == b"data: x\n\n"
    assert scrubber.feed(b"data: abc") == b"data: "
    assert scrubber.feed(b"dxf\n") == b"abcdxf\n"
    assert scrubber.feed(b"zabcde") == b"z"
    assert scrubber.feed(b"f") == b"******"


def test_the_mask_byte_is_in_no_secret() -> None:
    masker = masker_for([b"a*b#c~"])
    assert masker is not None and masker.mask == b"X"
    assert masker.whole(b"-a*b#c~-") == b"-XXXXXX-"


def test_request_headers_ask_for_a_whole_uncoded_body() -> None:
    headers = [(b"accept-encoding", b"gzip"), (b"accept_encoding", b"br"), (b"range", b"bytes=1-"),
               (b"if-range", b"x"), (b"if_range", b"x"), (b"accept", b"*/*")]  # fmt: skip
    assert request_headers(headers) == [(b"accept", b"*/*"), (b"accept-encoding", b"identity")]


def test_what_cannot_be_scanned() -> None:
    br = [(b"content-encoding", b"br")]
    assert unscannable(b"GET", 200, br) is not None
    assert unscannable(b"GET", 200, [(b"Content-Encoding", b"identity")]) is None
    assert unscannable(b"GET", 200, [(b"content-encoding", b"identity, br")]) is not None
    # gzip or deflate alone is decoded first (test_decode_properties.py), stacked is not.
    for coding in (b"gzip", b"X-Gzip", b"deflate", b"identity, gzip"):
        assert unscannable(b"GET", 200, [(b"content-encoding", coding)]) is None, coding
    for coding in (b"gzip, gzip", b"deflate,gzip", b"compress", b"zstd", b"gzip;q=1"):
        assert unscannable(b"GET", 200, [(b"content-encoding", coding)]) is not None, coding
    twice = [(b"content-encoding", b"gzip"), (b"Content-Encoding", b"gzip")]
    assert unscannable(b"GET", 200, twice) is not None  # two header lines: stacked too
    assert unscannable(b"GET", 206, []) is not None
    assert unscannable(b"HEAD", 200, br) is None  # no body
    assert unscannable(b"GET", 304, br) is None and unscannable(b"GET", 204, br) is None


def test_a_short_secret_is_masked_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="tether.proxy.http.scrub"):
        masker = masker_for([b"pw-1"])
    assert masker is not None and masker.whole(b"a pw-1 b") == b"a **** b"
    assert "shorter than 8 bytes" in caplog.text and "pw-1" not in caplog.text
