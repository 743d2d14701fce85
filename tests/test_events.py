"""The event protocol: encoding, and tolerant decoding of pipe chunks and files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loratop.core.events import (
    LOG,
    MEMORY,
    PROTOCOL_VERSION,
    RUN_FINISHED,
    STEP,
    Decoder,
    decode_line,
    encode,
    read_events,
)


def _step(seq: int, loss: float = 1.25) -> bytes:
    return encode(seq, STEP, {"step": seq, "loss": loss, "lr": 2e-4}, t=1000.0 + seq)


def test_encode_decode_round_trip() -> None:
    fields = {"step": 7, "loss": 1.5, "lr": 2e-4, "grad_norm": 0.25, "note": "ünïcode", "tags": ["a", "b"]}

    line = encode(7, STEP, fields, t=1234.5)

    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert decode_line(line) == {"v": PROTOCOL_VERSION, "seq": 7, "t": 1234.5, "type": STEP, **fields}


def test_decode_accepts_str_and_bytes() -> None:
    line = encode(0, LOG, {"message": "loading model"}, t=1.0)

    assert decode_line(line) == decode_line(line.decode())


def test_encode_stamps_the_time_when_not_given() -> None:
    event = decode_line(encode(0, LOG, {"message": "hi"}))

    assert event is not None
    assert event["t"] > 1_600_000_000


def test_non_finite_numbers_survive_as_floats() -> None:
    line = encode(3, STEP, {"loss": math.nan, "grad_norm": math.inf, "lr": -math.inf}, t=1.0)

    # The line is strict JSON: no bare NaN/Infinity tokens.
    json.loads(line, parse_constant=lambda token: pytest.fail(f"non-JSON constant {token}"))
    event = decode_line(line)
    assert event is not None
    assert isinstance(event["loss"], float) and math.isnan(event["loss"])
    assert event["grad_norm"] == math.inf
    assert event["lr"] == -math.inf


def test_non_finite_values_in_nested_fields_are_still_valid_json() -> None:
    line = encode(0, MEMORY, {"devices": [{"used": math.nan}]}, t=1.0)

    event = decode_line(line)
    assert event is not None
    assert event["devices"] == [{"used": "NaN"}]


def test_feed_whole_lines_in_one_chunk() -> None:
    decoder = Decoder()

    events = decoder.feed(_step(0) + _step(1) + _step(2))

    assert [e["seq"] for e in events] == [0, 1, 2]
    assert decoder.skipped == 0


def test_feed_chunks_split_mid_line() -> None:
    stream = _step(0) + _step(1) + _step(2)
    decoder = Decoder()

    first = decoder.feed(stream[:10])
    second = decoder.feed(stream[10 : len(_step(0)) + 5])
    third = decoder.feed(stream[len(_step(0)) + 5 :])

    assert first == []
    assert [e["seq"] for e in second] == [0]
    assert [e["seq"] for e in third] == [1, 2]
    assert decoder.skipped == 0


def test_feed_byte_by_byte() -> None:
    stream = _step(0) + encode(1, LOG, {"message": "héllo ✓"}, t=2.0) + _step(2)
    decoder = Decoder()

    events = [event for i in range(len(stream)) for event in decoder.feed(stream[i : i + 1])]

    assert [e["seq"] for e in events] == [0, 1, 2]
    assert events[1]["message"] == "héllo ✓"
    assert decoder.skipped == 0


def test_blank_lines_are_neither_events_nor_garbage() -> None:
    decoder = Decoder()

    events = decoder.feed(b"\n" + _step(0) + b"   \n\r\n" + _step(1))

    assert len(events) == 2
    assert decoder.skipped == 0


def _envelope(**changes: object) -> bytes:
    obj: dict[str, object] = {"v": PROTOCOL_VERSION, "seq": 5, "t": 1.0, "type": STEP, "loss": 1.0}
    obj.update(changes)
    obj = {k: v for k, v in obj.items() if v is not _DROP}
    return json.dumps(obj).encode()


_DROP = object()

GARBAGE = {
    "not-json": b"this is not json",
    "truncated-json": b'{"v": 1, "seq": 3, "t": 1.0, "ty',
    "json-list": b"[1, 2, 3]",
    "json-string": b'"step"',
    "json-null": b"null",
    "missing-seq": _envelope(seq=_DROP),
    "negative-seq": _envelope(seq=-1),
    "bool-seq": _envelope(seq=True),
    "float-seq": _envelope(seq=1.5),
    "string-seq": _envelope(seq="5"),
    "missing-t": _envelope(t=_DROP),
    "string-t": _envelope(t="now"),
    "missing-v": _envelope(v=_DROP),
    "unknown-type": _envelope(type="telepathy"),
    "missing-type": _envelope(type=_DROP),
    "bad-utf8": b'{"v": 1, "seq": 5, "t": 1.0, "type": "log", "message": "\xff\xfe"}',
}


@pytest.mark.parametrize("garbage", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_line_is_skipped_and_counted(garbage: bytes) -> None:
    decoder = Decoder()

    events = decoder.feed(_step(0) + garbage + b"\n" + _step(1))

    assert [e["seq"] for e in events] == [0, 1]
    assert decoder.skipped == 1
    assert decode_line(garbage) is None


def test_many_garbage_lines_are_all_counted() -> None:
    decoder = Decoder()

    events = decoder.feed(b"\n".join(GARBAGE.values()) + b"\n" + _step(9))

    assert [e["seq"] for e in events] == [9]
    assert decoder.skipped == len(GARBAGE)


def test_close_flushes_a_final_line_without_newline() -> None:
    decoder = Decoder()
    last = encode(1, RUN_FINISHED, {"status": "completed"}, t=2.0).rstrip(b"\n")

    assert [e["seq"] for e in decoder.feed(_step(0) + last)] == [0]
    closed = decoder.close()

    assert [e["type"] for e in closed] == [RUN_FINISHED]
    assert decoder.close() == []
    assert decoder.skipped == 0


def test_close_counts_a_cut_final_line() -> None:
    decoder = Decoder()
    decoder.feed(_step(0) + _step(1)[:20])

    assert decoder.close() == []
    assert decoder.skipped == 1


def test_close_with_nothing_pending() -> None:
    decoder = Decoder()
    decoder.feed(_step(0))

    assert decoder.close() == []
    assert decoder.skipped == 0


def test_an_overlong_partial_line_is_dropped() -> None:
    decoder = Decoder(max_line=64)

    assert decoder.feed(b"x" * 100) == []
    assert decoder.skipped == 1
    assert decoder.feed(b"tail of the junk\n" + _step(0))[-1]["seq"] == 0


def test_read_events_skips_garbage_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    cut = encode(3, LOG, {"message": "cut"}, t=4.0).rstrip(b"\n")
    path.write_bytes(_step(0) + b"garbage\n" + _step(1) + b"\xff\xfe\n" + b"[]\n" + _step(2) + cut)

    events, skipped = read_events(str(path))

    assert [e["seq"] for e in events] == [0, 1, 2, 3]
    assert skipped == 3


def test_read_events_on_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"")

    assert read_events(str(path)) == ([], 0)


def test_encode_rejects_an_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        encode(0, "telepathy", {})


@pytest.mark.parametrize("name", ["v", "seq", "t", "type"])
def test_encode_rejects_fields_that_clash_with_the_envelope(name: str) -> None:
    with pytest.raises(ValueError, match="clash with the envelope"):
        encode(0, STEP, {"loss": 1.0, name: 99})
