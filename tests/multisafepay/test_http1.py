"""The HTTP/1.1 response reader of the streams and the REST client (``bridge.multisafepay.http1``),
sans I/O: whatever the split of the bytes, the same body; garbage refused with ``HTTPGarbage``
and nothing else; h11 (which the streams used before) as the oracle for well-formed answers."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.multisafepay import http1

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def chunked(parts: list[bytes], ext: bool = False, trailers: bytes = b"") -> bytes:
    out = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    for part in parts:
        out += b"%x%s\r\n" % (len(part), b";name=v" if ext else b"") + part + b"\r\n"
    return out + b"0\r\n" + trailers + b"\r\n"


def read(raw: bytes, cuts: list[int], eof: bool = False) -> tuple[http1.Head, bytes, bool]:
    """Feed ``raw`` cut at ``cuts``: the head, the body read, and whether it was done.
    LookupError when the bytes hold no whole answer's head."""
    buf = bytearray()
    head: http1.Head | None = None
    reader: http1.BodyReader | None = None
    body = b""
    last = 0
    for cut in [*sorted({c % (len(raw) + 1) for c in cuts}), len(raw)]:
        buf += raw[last:cut]
        last = cut
        while reader is None and (got := http1.take_head(buf, 16 * 1024)) is not None:
            head = http1.parse_head(got)
            if not head.interim:
                reader = http1.BodyReader(head)
        if reader is not None:
            body += reader.read(buf)
    if head is None or reader is None:
        raise LookupError("no whole head")
    if eof:
        reader.eof()
    return head, body, reader.done


def h11_body(raw: bytes) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    body = b""
    while (event := conn.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
        if isinstance(event, h11.Data):
            body += bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            break
    return body


parts = st.lists(st.binary(min_size=1, max_size=300), max_size=12)
cuts = st.lists(st.integers(0, 5000), max_size=10)


@given(parts, cuts, st.booleans())
def test_a_chunked_body_reads_as_h11_reads_it_however_it_is_split(
    chunks: list[bytes], at: list[int], ext: bool
) -> None:
    raw = chunked(chunks, ext=ext, trailers=b"X-Checksum: 1\r\n" if ext else b"")
    head, body, done = read(raw, at)
    assert head.status == 200 and head.chunked and done
    assert head.headers["content-type"] == "text/event-stream"
    assert body == b"".join(chunks) == h11_body(raw)


@given(st.binary(max_size=2000), cuts)
def test_a_body_with_a_length_or_read_to_the_close(data: bytes, at: list[int]) -> None:
    with_length = HEAD + b"Content-Length: %d\r\n\r\n" % len(data) + data
    head, body, done = read(with_length + b"HTTP/1.1 200 next", at)
    assert (head.length, body, done) == (len(data), data, True)  # what follows is not its own
    to_close = HEAD + b"\r\n" + data
    head, body, done = read(to_close, at)
    assert head.length is None and body == data and not done
    assert read(to_close, at, eof=True)[2]  # the close ends it


def test_interim_answers_are_skipped_and_bodiless_statuses_have_none() -> None:
    head, body, done = read(b"HTTP/1.1 100 Continue\r\n\r\n" + chunked([b"abc"]), [3, 30])
    assert (head.status, body, done) == (200, b"abc", True)
    for status in (b"204 No Content", b"304 Not Modified"):
        head, body, done = read(b"HTTP/1.1 " + status + b"\r\n\r\n", [])
        assert (body, done) == (b"", True)
    assert http1.parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9", no_body=True).length == 0


def test_keep_alive_follows_the_version_and_connection_header() -> None:
    assert http1.parse_head(b"HTTP/1.1 200 OK").keep_alive
    assert not http1.parse_head(b"HTTP/1.1 200 OK\r\nConnection: close").keep_alive
    assert not http1.parse_head(b"HTTP/1.0 200 OK").keep_alive
    assert http1.parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive").keep_alive
    repeated = http1.parse_head(b"HTTP/1.1 401 Unauthorized\r\nX-A: 1\r\nx-a: 2")
    assert (repeated.status, repeated.headers["x-a"]) == (401, "1, 2")


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa1\r\n\r\n",  # an Arabic-Indic digit
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nab\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 2000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"X: y\r\n" * 3000,
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 5000,
    ],
)
def test_garbage_is_refused(raw: bytes) -> None:
    with pytest.raises(http1.HTTPGarbage):
        read(raw, [len(raw) // 2])


@pytest.mark.parametrize(
    "raw",
    [
        HEAD + b"Content-Length: 5\r\n\r\nabc",
        chunked([b"abc"])[:-5],  # cut inside the last chunk's framing
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
)
def test_a_body_cut_short_by_the_close_is_garbage(raw: bytes) -> None:
    with pytest.raises(http1.HTTPGarbage, match="closed before the body ended"):
        read(raw, [], eof=True)


@given(st.binary(max_size=600), cuts, st.sampled_from([b"", HEAD, chunked([])[:-5]]))
def test_any_bytes_are_read_or_refused_as_garbage(
    data: bytes, at: list[int], prefix: bytes
) -> None:
    raw = prefix + data
    try:
        _head, body, done = read(raw, at, eof=True)
    except http1.HTTPGarbage:
        return  # refused: the stream or the call fails (StreamError, RestError)
    except LookupError:  # no whole head yet: nothing read, nothing refused (yet)
        return
    assert done and len(body) <= len(raw)


def test_a_request_is_its_line_headers_and_body_and_nothing_can_add_a_line() -> None:
    raw = http1.request("POST", "/v1/json/orders?x=1", [("Host", "api")], b"{}")
    assert raw == b"POST /v1/json/orders?x=1 HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\n\r\n{}"
    assert http1.request("GET", "/s", []) == b"GET /s HTTP/1.1\r\n\r\n"
    for target, headers in [
        ("/a b", []),
        ("/a\r\nX: y", []),
        ("", []),
        ("/s", [("Authorization", "t\r\nX-Injected: 1")]),
        ("/s", [("X\n", "v")]),
    ]:
        with pytest.raises(ValueError):
            http1.request("GET", target, headers)
