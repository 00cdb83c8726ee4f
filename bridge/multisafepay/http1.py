"""HTTP/1.1 responses read from bytes, sans I/O: the head, then the body as it comes.

Shared by the REST client (:mod:`bridge.multisafepay.rest`, which wants a whole body) and the
event streams (:mod:`bridge.multisafepay.sse`, whose body lasts as long as the stream). Both
only ever read the answer to a request they wrote, so this is the client side alone: a status
line, header lines, then a body framed by ``Transfer-Encoding: chunked``, ``Content-Length``,
or the connection's close.

Why not h11 for the streams: a held stream kept an ``h11.Connection`` (about 1 KB and six
objects the garbage collector tracks, whose full collections grow with every held payment), and
each chunk cost ~25 us of h11's event machinery. A :class:`BodyReader` is one object with slots.

Lines end with CRLF, as RFC 9112 asks and every server the bridge talks to sends; anything else
is garbage (:class:`HTTPGarbage`), as are a head over its limit, a malformed chunk size or a
chunk not ended by CRLF. Not supported (no MultiSafepay answer needs them): header folding, a
transfer coding other than ``chunked``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BodyReader",
    "HTTPGarbage",
    "Head",
    "HeadTooLarge",
    "parse_head",
    "request",
    "take_head",
]

#: Longest chunk-size line (the size, and any extensions) and trailer section read.
MAX_CHUNK_LINE = 1024
MAX_TRAILERS = 16 * 1024

_HEX = b"0123456789abcdefABCDEF"


class HTTPGarbage(ValueError):
    """The bytes are not an HTTP/1.1 response (the message says where)."""


class HeadTooLarge(HTTPGarbage):
    pass


@dataclass(frozen=True, slots=True)
class Head:
    """A response's status line and headers (names lower-cased; repeats joined by ", ")."""

    status: int
    headers: dict[str, str]
    #: The server keeps the connection open for the next request.
    keep_alive: bool
    chunked: bool
    #: The body's length; None (and not chunked): read until the connection closes.
    length: int | None

    @property
    def interim(self) -> bool:
        """A 1xx answer: the real one follows on the same connection."""
        return 100 <= self.status < 200


def request(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes | None = None
) -> bytes:
    """A request's bytes: its line, ``headers`` (the caller's, ``Host`` first) and ``body``
    (with its ``Content-Length``; a ``POST`` without one says 0). ValueError for a target with
    a space or a control character, or a header that would break its line (a value with CR or
    LF could add a header of its own)."""
    if not target or any(c <= " " or c == "\x7f" for c in target):
        raise ValueError("a request target with a space or a control character")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError("a header with a line break")
        lines.append(f"{name}: {value}")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def take_head(buf: bytearray, limit: int) -> bytes | None:
    """The head at the start of ``buf`` (removed from it, with its blank line) once whole;
    None until then. :class:`HeadTooLarge` once ``limit`` bytes hold no whole head."""
    end = buf.find(b"\r\n\r\n", 0, limit + 4)
    if end < 0:
        if len(buf) > limit:
            raise HeadTooLarge("response head too large")
        return None
    head = bytes(buf[:end])
    del buf[: end + 4]
    return head


def parse_head(raw: bytes, *, no_body: bool = False) -> Head:
    """The head ``take_head`` returned, parsed. ``no_body``: the answer to a ``HEAD``."""
    text = raw.decode("latin-1")
    status_line, *lines = text.split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if (
        version not in ("HTTP/1.1", "HTTP/1.0")
        or len(code) != 3
        or not code.isdigit()
        or not code.isascii()
        or rest[3:4] not in ("", " ")
    ):
        raise HTTPGarbage(f"not an HTTP/1.1 status line: {status_line[:64]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPGarbage("a header line without a name and a colon")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    status = int(code)
    connection = headers.get("connection", "").lower()
    keep = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    coding = headers.get("transfer-encoding", "").lower()
    chunked = False
    length: int | None = None
    if coding:
        if coding.replace(" ", "") not in ("chunked", "identity,chunked"):
            raise HTTPGarbage(f"a transfer coding other than chunked: {coding[:32]!r}")
        chunked = True
    elif "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        if len(values) != 1 or not (only := values.pop()).isdigit() or not only.isascii():
            raise HTTPGarbage("a bad Content-Length")
        length = int(only)
    if no_body or status in (204, 304) or 100 <= status < 200:
        chunked, length = False, 0
    return Head(status, headers, keep, chunked, length)


# What a BodyReader reads next.
_SIZE, _DATA, _DATA_END, _TRAILERS, _LENGTH, _TO_CLOSE, _DONE = range(7)


class BodyReader:
    """A response's body, from the bytes after its head: :meth:`read` takes what it can from
    the buffer and returns the body's bytes in it (chunk framing removed); :attr:`done` once
    the body is whole. :meth:`eof` says the connection closed."""

    __slots__ = ("_state", "_left", "_trailers", "done")

    def __init__(self, head: Head) -> None:
        self._left = 0  # bytes of the current chunk, or of the body with a length, still due
        self._trailers = 0
        self.done = False
        if head.chunked:
            self._state = _SIZE
        elif head.length is None:
            self._state = _TO_CLOSE
        elif head.length:
            self._state, self._left = _LENGTH, head.length
        else:
            self._state, self.done = _DONE, True

    def read(self, buf: bytearray) -> bytes:
        if self._state == _TO_CLOSE or (self._state == _LENGTH and len(buf) < self._left):
            taken = bytes(buf)  # the common case of a held stream's body: all of it
            buf.clear()
            self._left -= len(taken)
            return taken
        parts: list[bytes] = []
        while buf and self._step(buf, parts):
            pass
        return b"".join(parts)

    def _step(self, buf: bytearray, parts: list[bytes]) -> bool:
        """One step of the framing; False when it needs more bytes (or the body is done)."""
        state = self._state
        if state == _DATA or state == _LENGTH:
            n = min(self._left, len(buf))
            parts.append(bytes(buf[:n]))
            del buf[:n]
            self._left -= n
            if self._left:
                return False
            self._state = _DATA_END if state == _DATA else _DONE
            self.done = state == _LENGTH
            return not self.done
        if state == _DATA_END:
            if len(buf) < 2:
                return False
            if buf[:2] != b"\r\n":
                raise HTTPGarbage("a chunk not ended by CRLF")
            del buf[:2]
            self._state = _SIZE
            return True
        if state == _SIZE or state == _TRAILERS:
            line = self._line(buf, MAX_CHUNK_LINE if state == _SIZE else MAX_TRAILERS)
            if line is None:
                return False
            if state == _TRAILERS:
                if not line:
                    self._state, self.done = _DONE, True
                    return False
                return True
            size = line.partition(b";")[0].strip(b" \t")
            if not size or len(size) > 16 or size.strip(_HEX):
                raise HTTPGarbage(f"a bad chunk size: {line[:32]!r}")
            self._left = int(size, 16)
            self._state = _DATA if self._left else _TRAILERS
            return True
        return False  # _DONE: what follows is not this body's (_TO_CLOSE is read's)

    def _line(self, buf: bytearray, limit: int) -> bytes | None:
        end = buf.find(b"\r\n", 0, limit + 2)
        if end < 0:
            if len(buf) > limit:
                raise HTTPGarbage("a chunk line or trailer section too long")
            return None
        if self._state == _TRAILERS:
            self._trailers += end + 2
            if self._trailers > MAX_TRAILERS:
                raise HTTPGarbage("a trailer section too long")
        line = bytes(buf[:end])
        del buf[: end + 2]
        return line

    def eof(self) -> None:
        """The connection closed: the end of a body read to the close; garbage (a body cut
        short) for any other unfinished one."""
        if self._state == _TO_CLOSE:
            self._state, self.done = _DONE, True
        elif not self.done:
            raise HTTPGarbage("the connection closed before the body ended")
