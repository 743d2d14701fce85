"""The trainer's event sink never blocks on its reader; the follower fills gaps from the file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from loratop.trainer import events as ev
from loratop.trainer.runtime.event_sink import EventSink
from loratop.tui.event_stream import PipeStream


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def test_a_reader_that_never_reads_does_not_block_and_the_file_has_everything(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    sink = EventSink(tmp_path / "events.jsonl", write_fd, max_pending=4096)
    done = threading.Event()

    def emit_many() -> None:
        for step in range(5000):  # ~1 MB: far beyond the 64 KiB pipe plus 4 KiB pending
            sink.emit(ev.STEP, step=step, loss=1.0, note="x" * 100)
        done.set()

    worker = threading.Thread(target=emit_many, daemon=True)
    worker.start()
    assert done.wait(timeout=30), "emit blocked on a reader that does not read"
    assert sink.pipe_skipped > 0
    events, skipped = ev.read_events(str(tmp_path / "events.jsonl"))
    assert skipped == 0 and [e["seq"] for e in events] == list(range(5000))
    # What did reach the pipe is whole lines in seq order, with gaps where events were left off.
    piped = ev.Decoder().feed(_drain(read_fd))
    seqs = [e["seq"] for e in piped]
    assert seqs == sorted(seqs) and len(seqs) + sink.pipe_skipped <= 5000 and seqs[0] == 0
    sink.close()
    os.close(read_fd)


def test_a_vanished_reader_closes_the_pipe_and_training_goes_on(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    sink = EventSink(tmp_path / "events.jsonl", write_fd)
    sink.emit(ev.LOG, message="before")
    os.close(read_fd)  # the dashboard died
    for step in range(50):
        sink.emit(ev.STEP, step=step, loss=2.0)
    assert sink.pipe_closed_reason is not None and "BrokenPipe" in sink.pipe_closed_reason
    sink.close()
    events, _ = ev.read_events(str(tmp_path / "events.jsonl"))
    assert len(events) == 51


def test_emitters_on_two_threads_never_interleave_or_reuse_seq(tmp_path: Path) -> None:
    sink = EventSink(tmp_path / "events.jsonl")

    def emit(kind: str) -> None:
        for i in range(2000):
            sink.emit(kind, i=i)

    threads = [threading.Thread(target=emit, args=(kind,)) for kind in (ev.STEP, ev.MEMORY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.close()
    events, skipped = ev.read_events(str(tmp_path / "events.jsonl"))
    assert skipped == 0
    assert [e["seq"] for e in events] == list(range(4000))


def test_event_stream_fills_a_seq_gap_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [ev.encode(seq, ev.STEP, {"step": seq, "loss": 1.0}) for seq in range(10)]
    path.write_bytes(b"".join(lines))
    read_fd, write_fd = os.pipe()
    # The pipe carried 0-2, garbage, then 6-9: 3-5 were left off a full pipe.
    os.write(write_fd, b"".join(lines[:3]) + b"not json\n" + b"".join(lines[6:]))
    os.close(write_fd)
    stream = PipeStream(read_fd, path)
    got = []
    while (batch := stream.read()) is not None:
        got += batch
    os.close(read_fd)
    assert [e["seq"] for e in got] == list(range(10))
    assert stream.filled_from_file == 3
    assert stream.skipped == 1
