"""The bounded SSE decoder: the standard's rules, any chunking, and the bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.multisafepay.sse_decoder import SSEDecoder, SSEMessage, SSEProtocolError

VECTOR = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "sse-stream-example.txt"


def decode(*chunks: bytes) -> list[SSEMessage]:
    decoder = SSEDecoder()
    return [m for c in chunks for m in decoder.feed(c)]


def test_documented_stream() -> None:
    if not VECTOR.exists():
        pytest.skip("vectors not present")
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
