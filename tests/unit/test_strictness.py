"""The strict request-head check: every head a strict and a lenient parser could read differently is refused."""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.net.http import http1

from fwdproxy.strictness import Refused, check_h2_request, check_head

URL = b"http://example.com/p?q=1"


def head(*fields: bytes, line: bytes = b"GET " + URL + b" HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(head(b"Host: example.com", b"Accept: */*"), id="3 absolute-form GET"),
        pytest.param(head(line=b"GET / HTTP/1.0"), id="3.2 HTTP/1.0 without Host"),
        pytest.param(head(b"Host: example.com:8080", line=b"GET / HTTP/1.0"), id="2.3 HTTP/1.0"),
        pytest.param(head(b"Host: [::1]:8080", line=b"GET /a HTTP/1.1"), id="7.2 IPv6 literal Host"),
        pytest.param(head(line=b"CONNECT example.com:443 HTTP/1.1"), id="3.2.3 CONNECT authority-form"),
        pytest.param(
            head(b"Host: example.com", line=b"OPTIONS * HTTP/1.1"), id="3.2.4 asterisk-form for OPTIONS"
        ),
        pytest.param(
            head(b"Host: h", b"Content-Length: 0", line=b"POST / HTTP/1.1"), id="6.2 Content-Length 0"
        ),
        pytest.param(
            head(b"Host: h", b"Content-Length: 123", line=b"PUT / HTTP/1.1"), id="6.2 Content-Length 123"
        ),
        pytest.param(
            head(b"Host: h", b"Transfer-Encoding:  Chunked ", line=b"POST / HTTP/1.1"),
            id="6.1 chunked any case, OWS",
        ),
        pytest.param(
            head(b"Host: h", b"X-Tab:\tvalue\twith\ttabs", b"X-Obs: caf\xe9"),
            id="5.5 HTAB and obs-text in values",
        ),
        pytest.param(head(b"Host: h", b"X-Empty:"), id="5.5 empty value"),
        pytest.param(
            head(b"Host: h", b"X: y", line=b"M-SEARCH / HTTP/1.1"), id="9110 9.1 extension method token"
        ),
    ],
)
def test_accepted(raw: bytes) -> None:
    assert check_head(raw) is None


@pytest.mark.parametrize(
    "raw, status, words",
    [
        pytest.param(head(b"Host: x", b" folded"), 400, "folded", id="9112 5.2 obs-fold SP"),
        pytest.param(head(b"Host: x", b"\tfolded"), 400, "folded", id="9112 5.2 obs-fold HTAB"),
        pytest.param(head(b"Host : x"), 400, "whitespace before its colon", id="9112 5.1 SP before colon"),
        pytest.param(head(b"Host\t: x"), 400, "whitespace before its colon", id="9112 5.1 HTAB before colon"),
        pytest.param(head(b"X-A: b\x00c"), 400, "control character", id="9110 5.5 NUL in value"),
        pytest.param(head(b"X-A: b\rc"), 400, "control character", id="9112 2.2 bare CR in value"),
        pytest.param(head(b"X-A: b\x1bc"), 400, "control character", id="9110 5.5 ESC in value"),
        pytest.param(head(b"X-A: b\x7f"), 400, "control character", id="9110 5.5 DEL in value"),
        pytest.param(head(b"X\x01A: b"), 400, "field name", id="9110 5.1 control in name"),
        pytest.param(head(b"X(A): b"), 400, "field name", id="9110 5.1 delimiter in name"),
        pytest.param(head(b": b"), 400, "field name", id="9110 5.1 empty name"),
        pytest.param(head(b"NoColon"), 400, "field name", id="9112 5 line without colon"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400, "bare LF", id="9112 2.2 bare LF in fields"
        ),
        pytest.param(b"GET / HTTP/1.1\nHost: x\n\n", 400, "CRLF", id="9112 2.2 bare LF everywhere"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\n", 400, "bare LF", id="9112 2.2 bare LF empty line"),
        pytest.param(head(line=b"GET /a b HTTP/1.1"), 400, "single spaces", id="9112 3 space in target"),
        pytest.param(head(line=b"GET  / HTTP/1.1"), 400, "single spaces", id="9112 3 double space"),
        pytest.param(head(line=b"GET / HTTP/1.1 "), 400, "single spaces", id="9112 3 trailing space"),
        pytest.param(head(line=b"GET\t/ HTTP/1.1"), 400, "single spaces", id="9112 3 HTAB separator"),
        pytest.param(head(line=b"G(T / HTTP/1.1"), 400, "not a token", id="9110 9.1 bad method"),
        pytest.param(head(line=b"GET /\x80 HTTP/1.1"), 400, "visible ASCII", id="9112 3.2 non-ASCII target"),
        pytest.param(head(line=b"GET /a#frag HTTP/1.1"), 400, "'#'", id="9112 3.2 fragment"),
        pytest.param(head(line=b"GET / HTTP/2.0"), 505, "HTTP/2.0", id="9110 15.6.6 HTTP/2.0 as text"),
        pytest.param(head(line=b"GET / HTTP/0.9"), 505, "HTTP/0.9", id="9110 15.6.6 HTTP/0.9"),
        pytest.param(head(line=b"GET / HTTP/1.2"), 505, "HTTP/1.2", id="9110 15.6.6 HTTP/1.2"),
        pytest.param(
            head(line=b"GET / http/1.1"), 400, "not an HTTP version", id="9112 2.3 lowercase version"
        ),
        pytest.param(
            head(line=b"GET / HTTP/1.10"), 400, "not an HTTP version", id="9112 2.3 two-digit minor"
        ),
        pytest.param(head(line=b"GET http://u@example.com/ HTTP/1.1"), 400, "URL", id="9110 4.2.4 userinfo"),
        pytest.param(
            head(line=b"GET http://exa%6dple.com/ HTTP/1.1"), 400, "URL", id="9110 4.2.1 pct in host"
        ),
        pytest.param(
            head(line=b"GET http://example.com:99999/ HTTP/1.1"), 400, "URL", id="9110 4.2.1 port range"
        ),
        pytest.param(
            head(line=b"GET http://example.com:+80/ HTTP/1.1"), 400, "URL", id="9110 4.2.1 signed port"
        ),
        pytest.param(head(line=b"GET http:///x HTTP/1.1"), 400, "URL", id="9110 4.2.1 empty host"),
        pytest.param(head(line=b"GET ftp://example.com/ HTTP/1.1"), 400, "URL", id="9112 3.2.2 not http(s)"),
        pytest.param(head(line=b"GET example.com/ HTTP/1.1"), 400, "URL", id="9112 3.2 no scheme"),
        pytest.param(head(line=b"GET * HTTP/1.1"), 400, "OPTIONS", id="9112 3.2.4 asterisk not OPTIONS"),
        pytest.param(head(line=b"CONNECT example.com HTTP/1.1"), 400, "host:port", id="9112 3.2.3 no port"),
        pytest.param(head(line=b"CONNECT u@h:443 HTTP/1.1"), 400, "host:port", id="9112 3.2.3 userinfo"),
        pytest.param(head(line=b"GET / HTTP/1.1"), 400, "no Host", id="9112 3.2 HTTP/1.1 without Host"),
        pytest.param(head(b"Host: a b"), 400, "Host", id="9110 7.2 space in Host"),
        pytest.param(head(b"Host: a@b"), 400, "Host", id="9110 7.2 userinfo in Host"),
        pytest.param(head(b"Host: a:0"), 400, "Host", id="9110 7.2 port 0"),
        pytest.param(head(b"Host:"), 400, "Host", id="9110 7.2 empty Host"),
        pytest.param(
            head(b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400, "both", id="9112 6.1 CL and TE"
        ),
        pytest.param(
            head(b"Transfer-Encoding: chunked", line=b"POST / HTTP/1.0"),
            400,
            "HTTP/1.0",
            id="9112 6.1 TE in 1.0",
        ),
        pytest.param(head(b"Transfer-Encoding: gzip, chunked"), 400, "exactly", id="9112 6.1 gzip, chunked"),
        pytest.param(
            head(b"Transfer-Encoding: chunked, chunked"), 400, "exactly", id="9112 6.1 chunked twice"
        ),
        pytest.param(
            head(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
            400,
            "exactly",
            id="9112 6.1 two TE lines",
        ),
        pytest.param(head(b"Transfer-Encoding: identity"), 400, "exactly", id="9112 6.1 identity"),
        pytest.param(head(b"Transfer-Encoding: xchunked"), 400, "exactly", id="9112 6.1 unknown coding"),
        pytest.param(head(b"Transfer-Encoding: chunked;q=1"), 400, "exactly", id="9112 6.1 coding parameter"),
        pytest.param(
            head(b"Content-Length: 5", b"Content-Length: 5"), 400, "several", id="9112 6.3 two equal CL"
        ),
        pytest.param(head(b"Content-Length: 5, 5"), 400, "decimal", id="9112 6.3 CL list"),
        pytest.param(
            head(b"Content-Length: 5", b"Content-Length: 6"), 400, "several", id="9112 6.3 differing CL"
        ),
        pytest.param(head(b"Content-Length: +5"), 400, "decimal", id="9110 8.6 signed CL"),
        pytest.param(head(b"Content-Length: -1"), 400, "decimal", id="9110 8.6 negative CL"),
        pytest.param(head(b"Content-Length: 0x10"), 400, "decimal", id="9110 8.6 hex CL"),
        pytest.param(head(b"Content-Length: 05"), 400, "decimal", id="9110 8.6 leading zero CL"),
        pytest.param(head(b"Content-Length: 1 0"), 400, "decimal", id="9110 8.6 space in CL"),
        pytest.param(head(b"Content-Length:"), 400, "decimal", id="9110 8.6 empty CL"),
        pytest.param(head(b"Content-Length: 1" + b"0" * 18), 400, "18 digits", id="9110 8.6 huge CL"),
        pytest.param(head(b"X-Big: " + b"a" * 65536), 431, "64 KiB", id="6585 5 complete head over 64 KiB"),
    ],
)
def test_refused(raw: bytes, status: int, words: str) -> None:
    refused = check_head(raw)
    assert isinstance(refused, Refused), raw
    assert refused.status == status, refused
    assert words in refused.message, refused


@pytest.mark.parametrize(
    "path, fields, words",
    [
        pytest.param(
            b"/ok", [(b"accept", b"*/*"), (b"te", b"trailers")], None, id="9113 8.2.2 TE trailers ok"
        ),
        pytest.param(b"/a b", [], ":path", id="9113 8.3.1 space in :path"),
        pytest.param(b"/a\r\nX: y", [], ":path", id="9113 8.3.1 CRLF in :path"),
        pytest.param(b"/a#f", [], ":path", id="9113 8.3.1 fragment in :path"),
        pytest.param(b"/a\tb", [], ":path", id="9113 8.3.1 HTAB in :path"),
        pytest.param(b"/\xc3\xa9", [], ":path", id="9113 8.3.1 non-ASCII :path"),
        pytest.param(b"/", [(b"X-Upper", b"v")], "lowercase", id="9113 8.2.1 uppercase name"),
        pytest.param(b"/", [(b"x\x01", b"v")], "lowercase", id="9113 8.2.1 control in name"),
        pytest.param(b"/", [(b"x", b"a\r\nb")], "control", id="9113 8.2.1 CRLF in value"),
        pytest.param(b"/", [(b"x", b"a\x00b")], "control", id="9113 8.2.1 NUL in value"),
        pytest.param(b"/", [(b"connection", b"close")], "connection-specific", id="9113 8.2.2 Connection"),
        pytest.param(b"/", [(b"transfer-encoding", b"chunked")], "connection-specific", id="9113 8.2.2 TE"),
        pytest.param(b"/", [(b"keep-alive", b"1")], "connection-specific", id="9113 8.2.2 Keep-Alive"),
        pytest.param(b"/", [(b"upgrade", b"h2c")], "connection-specific", id="9113 8.2.2 Upgrade"),
        pytest.param(b"/", [(b"te", b"gzip")], "connection-specific", id="9113 8.2.2 TE other than trailers"),
    ],
)
def test_h2_request(path: bytes, fields: list[tuple[bytes, bytes]], words: str | None) -> None:
    refused = check_h2_request(b"example.com", path, fields)
    if words is None:
        assert refused is None
    else:
        assert refused is not None and refused.status == 400 and words in refused.message, refused


@pytest.mark.parametrize(
    "authority, refused",
    [
        pytest.param(b"example.com:8443", False, id="9113 8.3.1 host:port"),
        pytest.param(b"[::1]:443", False, id="9113 8.3.1 IPv6 literal"),
        pytest.param(b"a b", True, id="9113 8.3.1 space in :authority"),
        pytest.param(b"user@example.com", True, id="9110 4.2.4 userinfo in :authority"),
        pytest.param(b"example.com:99999", True, id="9110 4.2.1 port out of range"),
    ],
)
def test_h2_authority(authority: bytes, refused: bool) -> None:
    assert (check_h2_request(authority, b"/", []) is not None) is refused


# Differential property: whatever check_head lets through, h11 (strict) and mitmproxy's parser (lenient)
# read as the same method, target and fields; so nothing accepted can mean one thing here, another there.
_PIECES = [
    b" ",
    b"\t",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\x0b",
    b":",
    b",",
    b"#",
    b"@",
    b"%",
    b"\xe9",
    b"a",
    b"0",
    b"\r\nContent-Length: 6",
    b"\r\nTransfer-Encoding: chunked",
    b"\r\n ",
    b"\r\nHost: b",
    b"-",
]
_BASE = [
    b"POST",
    b" ",
    b"http://example.com/p?q",
    b" ",
    b"HTTP/1.1",
    b"\r\n",
    b"Host",
    b": ",
    b"example.com",
    b"\r\n",
    b"Content-Length",
    b": ",
    b"5",
    b"\r\n",
    b"X-A",
    b":",
    b" v ",
    b"\r\n",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_BASE)), st.sampled_from(_PIECES)), max_size=3))
def test_accepted_heads_read_alike_by_h11_and_mitmproxy(edits: list[tuple[int, bytes]]) -> None:
    parts = list(_BASE)
    for at, piece in edits:
        parts.insert(at, piece)
    raw = b"".join(parts) + b"\r\n"
    if check_head(raw) is not None or raw.lower().count(b"\r\nhost:") > 1:
        return  # refused (several Host fields: by addons/guard.py, see test_guard.py)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    request = conn.next_event()
    assert isinstance(request, h11.Request), raw
    lines = raw[:-4].split(b"\r\n")
    mitm = http1.read_request_head(lines)
    assert mitm.data.method == request.method, raw
    assert [(k.lower(), v) for k, v in mitm.headers.fields] == list(request.headers), raw
    h11_fields = dict(request.headers)
    framing = None if b"transfer-encoding" in h11_fields else int(h11_fields.get(b"content-length", b"0"))
    assert http1.expected_http_body_size(mitm) == framing, raw
