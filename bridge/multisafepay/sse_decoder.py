"""Server-sent events, decoded from bytes with bounds: sans-I/O, like h11.

httpx-sse's decoder keeps whatever a server sends until a line ends, so one endless line
(garbage, or a hostile peer) grows without limit. This decoder takes chunks of bytes, yields
complete events, and refuses a line longer than ``max_line`` or an event larger than
``max_event``. It follows the WHATWG rules the stream needs: ``event``, ``data`` (joined with
newlines), ``id`` (kept across events, ignored if it contains NUL), ``retry``, comment lines
starting with ``:``, CR, LF or CRLF line ends, a leading BOM, and a blank line dispatching.
"""

from __future__ import annotations

from dataclasses import dataclass


class SSEProtocolError(ValueError):
    """The byte stream is not server-sent events the bridge will read."""


@dataclass(frozen=True, slots=True)
class SSEMessage:
    event: str
    data: str
    id: str | None
    retry: int | None = None


class SSEDecoder:
    # one per stream held: slots, not a per-instance dict
    __slots__ = (
        "_max_line",
        "_max_event",
        "_buffer",
        "_started",
        "_skip_lf",
        "_event",
        "_data",
        "_size",
        "_last_id",
        "_retry",
        "lines",
        "_error",
    )

    def __init__(self, *, max_line: int = 64 * 1024, max_event: int = 256 * 1024) -> None:
        self._max_line = max_line
        self._max_event = max_event
        self._buffer = bytearray()
        self._started = False
        self._skip_lf = False  # the last chunk ended in CR: a following LF ends nothing
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._last_id: str | None = None
        self._retry: int | None = None
        #: Lines read so far, comments included: "the connection is alive" for an idle check.
        self.lines = 0
        self._error: SSEProtocolError | None = None

    @property
    def last_event_id(self) -> str | None:
        return self._last_id

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        """Decode one chunk; return the events it completed.

        Events completed before a protocol error in the same chunk are returned first; the
        error is raised by the next ``feed`` or by ``close``.
        """
        self.close()
        out: list[SSEMessage] = []
        try:
            self._feed(chunk, out)
        except SSEProtocolError as exc:
            if not out:
                raise
            self._error = exc
        return out

    def close(self) -> None:
        """Raise the protocol error held back by ``feed``, if any."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _feed(self, chunk: bytes, out: list[SSEMessage]) -> None:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        self._buffer += chunk
        start = 0
        buf = self._buffer
        while True:
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            ends = [i for i in (cr, lf) if i != -1]
            if not ends:
                break
            end = min(ends)
            line = bytes(buf[start:end])
            if buf[end : end + 1] == b"\r":
                if end + 1 < len(buf):
                    start = end + 2 if buf[end + 1 : end + 2] == b"\n" else end + 1
                else:
                    start = end + 1
                    self._skip_lf = True
            else:
                start = end + 1
            message = self._line(line)
            if message is not None:
                out.append(message)
        del buf[:start]
        if len(buf) > self._max_line:
            raise SSEProtocolError(f"a line longer than {self._max_line} bytes")

    def _line(self, raw: bytes) -> SSEMessage | None:
        if len(raw) > self._max_line:
            raise SSEProtocolError(f"a line longer than {self._max_line} bytes")
        self.lines += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEProtocolError("not UTF-8") from exc
        if not self._started:
            self._started = True
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(value) + 1
            if self._size > self._max_event:
                raise SSEProtocolError(f"an event larger than {self._max_event} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry":
            # ASCII digits only, as the standard says: "²".isdigit() is true, int("²") raises.
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None  # other field names are ignored, as the standard says

    def _dispatch(self) -> SSEMessage | None:
        if not self._data:
            self._event = ""
            return None
        message = SSEMessage(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self._last_id or None,
            retry=self._retry,
        )
        self._event = ""
        self._data = []
        self._size = 0
        return message
