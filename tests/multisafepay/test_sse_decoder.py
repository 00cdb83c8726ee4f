"""The bounded SSE decoder: the standard's rules, any chunking, and the bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.multisafepay.sse_decoder import SSEDecoder, SSEMessage, SSEProtocolError

# MultiSafepay/docs: content/point-of-sale/event-notifications.md, the stream example (vendored)
VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "sse-stream-example.txt"


def decode(*chunks: bytes) -> list[SSEMessage]:
    decoder = SSEDecoder()
    return [m for c in chunks for m in decoder.feed(c)]


def test_documented_stream() -> None:
    messages = decode(VECTOR.read_bytes())
    assert [m.event for m in messages] == ["session.order", "session.order"]
    assert '"status":"completed"' in messages[1].data and messages[0].id is None


def test_fields_comments_and_line_ends() -> None:
    raw = (
        b"\xef\xbb\xbf: hello\r\nid: 7\r\nevent: session.order\rdata: a\ndata:b\r\n\r\n"
        b"data: ping\n\n: keep-alive\n\nretry: 3000\nid: 8\0\ndata: x\n\n"
    )
    messages = decode(raw)
    assert messages == [
        SSEMessage("session.order", "a\nb", "7"),
        SSEMessage("message", "ping", "7"),
        SSEMessage("message", "x", "7", retry=3000),  # an id with NUL is ignored
    ]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: session.order\n\ndata: y\n\n") == [SSEMessage("message", "y", None)]


def test_an_unfinished_message_is_held_until_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'event: session.order\ndata: {"status":') == []
    assert decoder.feed(b'"x"}\n') == []
    assert decoder.feed(b"\n") == [SSEMessage("session.order", '{"status":"x"}', None)]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\n\r", b"\n") == [SSEMessage("message", "a", None)]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: " + b"x" * 70_000],  # no line end: held bytes are bounded too
        [b"data: " + b"x" * 70_000 + b"\n\n"],
        [b"data: " + b"x" * 60_000 + b"\n"] * 5,  # lines within bounds, an event too large
    ],
)
def test_bounds(chunks: list[bytes]) -> None:
    with pytest.raises(SSEProtocolError):
        decode(*chunks)


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(SSEProtocolError):
        decode(b"data: \xff\n\n")


messages = st.lists(
    st.tuples(
        st.sampled_from(["session.order", "session.qr", ""]),
        st.lists(
            st.text(
                alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]),
                max_size=20,
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    max_size=8,
)


@given(messages, st.lists(st.integers(1, 40), max_size=20), st.sampled_from(["\n", "\r\n", "\r"]))
def test_any_chunking_gives_the_same_events(events: list, cuts: list[int], eol: str) -> None:
    text = ""
    for name, datas in events:
        if name:
            text += f"event: {name}{eol}"
        text += "".join(f"data: {d}{eol}" for d in datas) + eol
    raw = text.encode()
    whole = decode(raw)
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(raw[pos : pos + cut])
        pos += cut
    chunks.append(raw[pos:])
    assert decode(*chunks) == whole
    assert [(m.event, m.data) for m in whole] == [(n or "message", "\n".join(d)) for n, d in events]


@pytest.mark.parametrize("value", ["²", "١٢٣", "3000²", "３０００", "", " 3000", "-1", "1e3"])
def test_retry_that_is_not_ascii_digits_is_ignored(value: str) -> None:
    raw = f"retry: {value}\ndata: x\n\n".encode()
    assert decode(raw) == [SSEMessage("message", "x", None, retry=None)]


_FIELD_NAMES = st.sampled_from(["data", "event", "id", "retry", ":", "", "DATA", "other"])
_FIELD_LINES = st.lists(
    st.tuples(_FIELD_NAMES, st.sampled_from([":", ": ", ""]), st.text(max_size=30)).map(
        lambda t: f"{t[0]}{t[1]}{t[2]}"
    ),
    max_size=12,
)


def _decode_all(chunks: list[bytes]) -> list[SSEMessage]:
    """Feed and close; the only exception allowed out is the decoder's own protocol error."""
    decoder = SSEDecoder(max_line=256, max_event=1024)
    out: list[SSEMessage] = []
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
        decoder.close()
    except SSEProtocolError:
        pass  # refusing a stream is allowed; any other exception fails the test
    return out


@given(st.lists(st.binary(max_size=300), max_size=10))
def test_fuzz_arbitrary_bytes_only_raise_protocol_errors(chunks: list[bytes]) -> None:
    for message in _decode_all(chunks):
        assert isinstance(message.data, str) and isinstance(message.event, str)
        assert message.retry is None or message.retry >= 0


@given(_FIELD_LINES, st.sampled_from(["\n", "\r\n", "\r"]), st.integers(1, 50))
def test_fuzz_field_lines_only_raise_protocol_errors(lines: list[str], eol: str, cut: int) -> None:
    raw = (eol.join(lines) + eol + eol).encode("utf-8", "surrogatepass")
    chunks = [raw[i : i + cut] for i in range(0, len(raw), cut)]
    for message in _decode_all(chunks):
        assert message.retry is None or message.retry >= 0
