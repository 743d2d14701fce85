"""The trainer's event sink never blocks on its reader; the follower fills gaps from the file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from loratop.core import events as ev
from loratop.core.event_stream import PipeStream
from loratop.trainer.event_sink import EventSink


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


def test_a_torn_last_line_is_repaired_when_the_file_is_opened(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    whole = b"".join(ev.encode(seq, ev.LOG, {"message": f"m{seq}"}) for seq in range(3))
    path.write_bytes(whole + ev.encode(3, ev.LOG, {"message": "cut"})[:17])  # a writer died mid-line
    sink = EventSink(path)
    assert path.read_bytes() == whole, "the torn tail is cut back to the last whole line"
    sink.emit(ev.LOG, message="after")
    sink.close()
    events, skipped = ev.read_events(str(path))
    assert skipped == 0 and [e["message"] for e in events] == ["m0", "m1", "m2", "after"]


FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from loratop.core import events as ev
from loratop.trainer.event_sink import EventSink

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (4000, resource.RLIM_INFINITY))
path = Path(sys.argv[1])
sink = EventSink(path)
for step in range(100):
    sink.emit(ev.STEP, step=step, loss=1.5, lr=1e-4, note="x" * 60)
print(sink.write_error.errno, len(sink.unwritten), sink.disk_full, path.stat().st_size, flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # room again
print(sink.flush_unwritten(), len(sink.unwritten), flush=True)
sink.close()
"""


def test_a_write_that_fails_part_way_leaves_whole_lines_and_keeps_the_rest(tmp_path: Path) -> None:
    """The file-size limit makes writes fail part-way, as a filling disk does (EFBIG for ENOSPC)."""
    import errno
    import subprocess
    import sys

    path = tmp_path / "events.jsonl"
    out = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT, str(path)], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    code, unwritten, disk_full, size_then = out[0].split()
    assert int(code) == errno.EFBIG and disk_full == "False", "only ENOSPC/EDQUOT count as a full disk"
    assert 0 < int(size_then) <= 4000 and 0 < int(unwritten) < 100
    assert out[1] == "True 0", "once there is room, every kept line is written"
    events, skipped = ev.read_events(str(path))
    assert skipped == 0, "no torn line"
    assert [e["seq"] for e in events] == list(range(100)) and [e["step"] for e in events] == list(range(100))


def test_gaps_are_filled_by_reading_the_file_once_not_once_per_gap(tmp_path: Path) -> None:
    """A slow reader sees a gap every few events: filling them must not reread the whole file each time."""
    path = tmp_path / "events.jsonl"
    lines = [ev.encode(seq, ev.STEP, {"step": seq, "loss": 1.0}) for seq in range(3000)]
    path.write_bytes(b"".join(lines))
    read_fd, write_fd = os.pipe()
    stream = PipeStream(read_fd, path)
    seen: list[int] = []
    for start in range(0, 3000, 100):  # the pipe carries one event in ten; the file has them all
        os.write(write_fd, b"".join(lines[i] for i in range(start, start + 100, 10)))
        seen += [e["seq"] for e in stream.read() or []]
    os.close(write_fd)
    assert stream.read() is None
    seen += [e["seq"] for e in stream.rest_from_file()]
    assert seen == list(range(3000))
    assert stream.filled_from_file == 2700
    assert stream.file_bytes_read == path.stat().st_size, "each byte of the file read once"
    os.close(read_fd)
