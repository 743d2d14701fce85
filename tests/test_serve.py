"""``loratop serve``: the app in a real headless browser, and the token that keeps others out.

The browser is Debian's ``chromium``, driven over the Chrome DevTools Protocol with
aiohttp's websocket client. xterm.js draws the terminal on a canvas, so the text is not in
the DOM: a script injected before the page loads records the binary websocket frames the
page receives (the app's terminal output); the tests decode them, strip the escape
sequences and look for text. Without chromium the browser tests skip, unless ``CI`` is set
(``.ci/run`` installs it): there they fail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import queue
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import psutil
import pytest

from loratop.cli.serve import APP_QUIT_GRACE_S, MAX_COLUMNS, MAX_ROWS, banner
from loratop.preflight.config import load_config, parse_overrides
from loratop.preflight.launcher import launch
from tests.conftest import DEMO_CONFIG, REPO, of_type, read_events

URL_LINE = re.compile(r"^\s*(http://\S+/\?token=\S+)$")
STARTUP_S = 60
"""Seconds for ``loratop serve`` to print its link (an import on two busy cores)."""
SCREEN_S = 90
"""Seconds for the page to show a screen: chromium, the app process and its first frames."""
RESIZE_AGAIN_S = 2.0
"""A resize the app has shown no sign of is asked for again this often (well inside the server's heartbeat)."""


# --- loratop serve as a subprocess ---------------------------------------------------------


class Served:
    """A running ``loratop serve``: its process, the link it printed and what it said."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def url(self, timeout: float = STARTUP_S) -> str:
        """The tokened link it printed (waits for it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no link from loratop serve after {timeout} s: {self.stdout}") from None
            if line is None:
                raise AssertionError(f"loratop serve ended without a link: {self.stdout} {self.finish()}")
            self.stdout.append(line)
            match = URL_LINE.match(line)
            if match:
                return match.group(1)

    def next_line(self, timeout: float = 10) -> str:
        """The next line it printed."""
        line = self.lines.get(timeout=timeout)
        assert line is not None, "loratop serve ended"
        self.stdout.append(line)
        return line

    def finish(self, sig: int | None = signal.SIGINT, timeout: float = 30) -> str:
        """Stop it as Ctrl+C in its terminal would (``sig`` to its process group; ``None``: already
        sent), wait for it to exit; its stderr."""
        if sig is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
        try:
            _, self.stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.communicate(timeout=10)
            raise AssertionError(f"loratop serve still running {timeout} s after signal {sig}") from None
        return self.stderr


def _serve_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loratop.cli.main", "serve", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the test's Ctrl+C, and the cleanup, reach all of it
    )


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start ``loratop serve ARGS``; every one started is stopped (its whole group) at the end."""
    started: list[Served] = []

    def start(*args: str) -> Served:
        served = Served(_serve_process(*args))
        started.append(served)
        return served

    yield start
    for served in started:
        if served.process.poll() is None:  # a test that failed midway: its apps too (each in a session of its own)
            with contextlib.suppress(psutil.NoSuchProcess):
                server = psutil.Process(served.process.pid)
                for process in [*server.children(recursive=True), server]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        process.kill()
            served.process.communicate(timeout=10)


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


# --- the browser ----------------------------------------------------------------------------

RECORDER = r"""
(() => {
  // The terminal's bytes as the page receives them (xterm.js draws them on a canvas).
  const Native = window.WebSocket;
  const decoder = new TextDecoder();
  window.__served = "";
  window.__socketUrls = [];
  class Recording extends Native {
    constructor(...args) {
      super(...args);
      window.__socketUrls.push(String(args[0]));
      this.addEventListener("message", (event) => {
        if (event.data instanceof ArrayBuffer) {
          window.__served += decoder.decode(new Uint8Array(event.data), { stream: true });
        }
      });
    }
  }
  window.WebSocket = Recording;
})();
"""

ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1bP[^\x1b]*\x1b\\|\x1b[@-Z\\-_]")


def screen_text(raw: str) -> str:
    """The printable text of terminal output: escape sequences (colour, cursor moves) dropped."""
    return ESCAPES.sub("", raw)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[int]:
    """A headless chromium; yields its DevTools port. Killed (its process group) at the end."""
    binary = _chromium()
    if binary is None:
        message = "chromium is not installed (apt-get install -y chromium): the browser tests need it"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; .ci/run installs it")
        pytest.skip(message)
    profile = tmp_path / "chromium-profile"
    argv = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--remote-debugging-port=0", "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1280,800", "about:blank"]  # fmt: skip
    log = tmp_path / "chromium.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.is_file() and active.read_text().strip()):
            if process.poll() is not None:
                raise AssertionError(f"chromium ended ({process.returncode}): {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("chromium wrote no DevToolsActivePort within 60 s")
            time.sleep(0.1)
        yield int(active.read_text().split()[0])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class Page:
    """One browser tab over the DevTools Protocol: commands, and the events seen meanwhile."""

    def __init__(self, websocket: aiohttp.ClientWebSocketResponse) -> None:
        self.websocket = websocket
        self.events: list[dict[str, Any]] = []
        self._id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self.websocket.send_json({"id": self._id, "method": method, "params": params})
        while True:
            message = await self.websocket.receive_json(timeout=30)
            if message.get("id") == self._id:
                assert "error" not in message, f"{method}: {message['error']}"
                return dict(message["result"])
            self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def served_text(self) -> str:
        """Everything the app has drawn so far, as text."""
        return screen_text(await self.evaluate("window.__served || ''"))

    async def wait_for(
        self, predicate: Callable[[str], Any], what: str, since: int = 0, timeout: float = SCREEN_S
    ) -> Any:
        """Wait until ``predicate`` (on the text drawn after offset ``since``) is truthy; return that."""
        deadline = time.monotonic() + timeout
        while True:
            text = (await self.served_text())[since:]
            found = predicate(text)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"the page did not show {what} within {timeout} s; it drew: ...{text[-1500:]!r}")
            await asyncio.sleep(0.3)

    async def press(self, key: str, text: str = "", code: str = "", key_code: int = 0) -> None:
        """A key pressed in the page, on the terminal's focused textarea (as a user would type)."""
        await self.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
        common = {"key": key, "code": code, "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code}
        await self.call("Input.dispatchKeyEvent", type="keyDown", text=text, **common)
        await self.call("Input.dispatchKeyEvent", type="keyUp", **common)


async def open_page(devtools_port: int, url: str, body: Callable[[Page], Awaitable[None]]) -> list[str]:
    """Open ``url`` in the browser's tab with the frame recorder in place, run ``body(page)``;
    return the URL of every request the page made."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{devtools_port}/json/list") as response:
            targets = await response.json()
        target = next(t for t in targets if t["type"] == "page")
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as websocket:
            page = Page(websocket)
            await page.call("Network.enable")
            await page.call("Page.enable")
            await page.call("Page.addScriptToEvaluateOnNewDocument", source=RECORDER)
            await page.call("Page.navigate", url=url)
            await body(page)
            await page.call("Runtime.evaluate", expression="1")  # flush the events sent meanwhile
            return [
                e["params"]["request"]["url"] for e in page.events if e.get("method") == "Network.requestWillBeSent"
            ]


def _assert_all_from(requests: list[str], url: str) -> None:
    """The page fetched nothing from anywhere but the server (``data:``/``blob:`` are in-page)."""
    origin = urlsplit(url).netloc
    outside = [r for r in requests if not r.startswith(("data:", "blob:")) and urlsplit(r).netloc != origin]
    assert requests and not outside, f"requests outside {origin}: {outside}"


# --- in the browser -------------------------------------------------------------------------


def test_the_browser_shows_recorded_runs_and_enter_opens_the_monitor(
    runs: Path, serve: Callable[..., Served], chromium: int
) -> None:
    served = serve("--runs-dir", str(runs), "--port", "0")
    url = served.url()
    last = of_type(read_events(runs / "tiny-r8"), "step")[-1]["step"]

    async def body(page: Page) -> None:
        await page.wait_for(lambda t: all(n in t for n in ("tiny-r8", "tiny-r16", "tiny-lr-high")), "the run names")
        await page.wait_for(lambda t: f"{last}/{last}" in t, f"a step count ({last}/{last})")
        # The home screen sorts running-then-newest; whichever run is first, Enter opens its monitor.
        since = len(await page.served_text())
        await page.press("Enter", text="\r", code="Enter", key_code=13)
        await page.wait_for(lambda t: re.search(r"step \d+/\d+ · loss", t), "the monitor's header", since=since)

    requests = asyncio.run(open_page(chromium, url, body))
    _assert_all_from(requests, url)
    assert any(r.startswith(f"http://127.0.0.1:{_port(url)}/static/") for r in requests)
    assert "Traceback" not in served.finish()
    assert served.process.returncode == 0


@pytest.mark.slow
def test_the_browser_follows_a_live_run_and_a_key_opens_the_help(
    tmp_path: Path, serve: Callable[..., Served], chromium: int
) -> None:
    root = tmp_path / "runs"
    overrides = [f"output_dir={root / 'live-demo'}", "training.max_steps=3000"]
    run = launch(load_config(DEMO_CONFIG, parse_overrides(overrides)), DEMO_CONFIG)
    os.close(run.events_fd)  # watched through its folder, as a second terminal would
    try:
        served = serve("--runs-dir", str(root), "--port", "0")
        url = served.url()
        steps: list[int] = []

        def step_shown(text: str) -> int | None:
            # The home screen's row: name, status, step (the step column may be cut short: "107/").
            shown = [int(s) for s in re.findall(r"live-demo\s+running\s+(\d+)", text)]
            return max(shown) if shown and max(shown) > 0 else None

        async def body(page: Page) -> None:
            await page.wait_for(lambda t: "live-demo" in t, "the live run's name", timeout=180)
            steps.append(await page.wait_for(step_shown, "the live run's step count", timeout=180))
            since = len(await page.served_text())
            await page.press("Enter", text="\r", code="Enter", key_code=13)
            header = await page.wait_for(
                lambda t: re.findall(r"step (\d+)/3000", t), "the monitor's step", since=since, timeout=60
            )
            steps.append(int(header[-1]))
            since = len(await page.served_text())
            await page.press("?", text="?", code="Slash", key_code=191)
            await page.wait_for(lambda t: "loratop keys" in t, "the help screen", since=since)

        requests = asyncio.run(open_page(chromium, url, body))
        _assert_all_from(requests, url)
        assert steps[0] >= 1 and steps[1] >= steps[0], steps  # the count moves on as the run trains
        assert run.process.poll() is None, "the run was to go on training while watched"
        assert "Traceback" not in served.finish()
        assert served.process.returncode == 0
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)  # stop at a step boundary, as the dashboard would
        run.process.wait(timeout=120)
    assert of_type(read_events(run.run_dir), "run_finished")[0]["status"] == "stopped"


# --- the token, the origin, the address (no browser) ----------------------------------------


async def _get(url: str, cookies: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession(cookies=cookies) as session, session.get(url, allow_redirects=False) as response:
        return response.status, await response.text(), {k: v.value for k, v in response.cookies.items()}


async def _websocket_status(url: str, cookies: dict[str, str] | None = None, origin: str | None = None) -> int:
    """The websocket's handshake status: 101 when it opened (and the app sent its first bytes)."""
    headers = {"Origin": origin} if origin else {}
    async with aiohttp.ClientSession(cookies=cookies) as session:
        try:
            async with session.ws_connect(url, headers=headers) as websocket:
                message = await websocket.receive(timeout=STARTUP_S)
                assert message.type == aiohttp.WSMsgType.BINARY, message
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


def test_only_the_printed_link_opens_it(runs: Path, serve: Callable[..., Served]) -> None:
    served = serve("--runs-dir", str(runs), "--port", "0")
    url = served.url()
    base = f"http://127.0.0.1:{_port(url)}"
    ws = f"ws://127.0.0.1:{_port(url)}/ws?width=80&height=24"

    async def check() -> None:
        for path in ("/", "/?token=not-the-token", "/static/js/textual.js", "/static/", "/download/x"):
            status, text, cookies = await _get(base + path)
            assert status == 403 and not cookies, path
            assert text.count("\n") == 1 and "the link" in text and "loratop serve" in text, text
        assert await _websocket_status(ws) == 403
        assert await _websocket_status(ws + "&token=not-the-token") == 403

        status, html, cookies = await _get(url)
        assert status == 200 and list(cookies.values()) == [_token(url)]
        # Every URL in the page is on this server: no Google Fonts, no CDN.
        links = re.findall(r"""(?:https?|wss?):(//[^\s"'<>)]+)|(?<![:\w])(//[\w.-]+)""", html)
        assert links and all(
            urlsplit(a or b).netloc == f"127.0.0.1:{_port(url)}" for a, b in links
        ), links  # fmt: skip
        assert "googleapis" not in html and "https://" not in html

        status, _, _ = await _get(base + "/static/js/textual.js", cookies=cookies)
        assert status == 200
        assert await _websocket_status(ws, cookies={"loratop_serve_x": _token(url)}) == 403  # another server's name
        assert await _websocket_status(ws, cookies=cookies, origin="http://evil.example") == 403
        assert await _websocket_status(ws, cookies=cookies, origin=base) == 101

    asyncio.run(check())
    assert "Traceback" not in served.finish()


def test_the_page_builds_its_urls_from_the_host_the_browser_used(runs: Path, serve: Callable[..., Served]) -> None:
    """``ssh -L 9000:127.0.0.1:8000``: the browser says ``Host: localhost:9000``; the page must follow."""
    served = serve("--runs-dir", str(runs), "--port", "0")
    url = served.url()

    async def check() -> None:
        async with aiohttp.ClientSession() as session:
            headers = {"Host": "localhost:9000"}
            async with session.get(url, headers=headers) as response:
                assert response.status == 200
                html = await response.text()
        assert 'data-session-websocket-url="ws://localhost:9000/ws"' in html
        assert 'href="http://localhost:9000/static/css/xterm.css"' in html
        assert f":{_port(url)}" not in html

    asyncio.run(check())


def test_ctrl_c_closes_the_apps_and_exits_cleanly(runs: Path, serve: Callable[..., Served]) -> None:
    served = serve("--runs-dir", str(runs), "--port", "0")
    url = served.url()
    base = f"http://127.0.0.1:{_port(url)}"
    apps: list[psutil.Process] = []

    async def connect_then_stop() -> None:
        status, _, cookies = await _get(url)
        assert status == 200
        async with (
            aiohttp.ClientSession(cookies=cookies) as session,
            session.ws_connect(base.replace("http", "ws") + "/ws", headers={"Origin": base}) as websocket,
        ):
            first = await websocket.receive(timeout=STARTUP_S)
            assert first.type == aiohttp.WSMsgType.BINARY
            apps.extend(psutil.Process(served.process.pid).children(recursive=True))
            assert apps, "an app process per connection"
            os.killpg(served.process.pid, signal.SIGINT)  # what Ctrl+C in its terminal does
            closed = await websocket.receive(timeout=30)
            while closed.type == aiohttp.WSMsgType.BINARY:  # the app's last frames, then the close
                closed = await websocket.receive(timeout=30)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)

    asyncio.run(connect_then_stop())
    stderr = served.finish(None)
    assert served.process.returncode == 0
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    _, alive = psutil.wait_procs(apps, timeout=10)
    assert not alive, f"app processes left running: {alive}"


def test_it_listens_on_127_0_0_1_by_default(runs: Path, serve: Callable[..., Served]) -> None:
    served = serve("--runs-dir", str(runs), "--port", "0")
    url = served.url()
    assert urlsplit(url).hostname == "127.0.0.1"
    port = _port(url)
    assert served.next_line().startswith(f"From a laptop: ssh -L {port}:127.0.0.1:{port} ")
    listening = [c.laddr for c in psutil.Process(served.process.pid).net_connections("inet") if c.status == "LISTEN"]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", _port(url))]
    assert served.finish(signal.SIGTERM) == "" and served.process.returncode == 0


def test_every_interface_is_allowed_with_a_warning(runs: Path, serve: Callable[..., Served]) -> None:
    served = serve("--runs-dir", str(runs), "--port", "0", "--host", "0.0.0.0")
    url = served.url()
    listening = [c.laddr for c in psutil.Process(served.process.pid).net_connections("inet") if c.status == "LISTEN"]
    assert [(a.ip, a.port) for a in listening] == [("0.0.0.0", _port(url))]
    stderr = served.finish()
    assert stderr.startswith("warning: listening on every interface") and "anyone who can reach" in stderr
    assert "has the token" in stderr and stderr.count("\n") == 2
    assert "plain HTTP" in stderr and f"ssh -L {_port(url)}:127.0.0.1:{_port(url)} " in stderr


def test_off_loopback_the_warning_says_plain_http_and_gives_the_tunnel(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        _, warnings = banner(tmp_path, ipaddress.ip_address(host), 8000, "secret")
        said = "\n".join(warnings)
        assert "plain HTTP" in said and "the link's token and the whole session" in said, said
        assert "travel unencrypted" in said and "SSH tunnel" in said, said
        assert "ssh -L 8000:127.0.0.1:8000 " in said, said
    for host in ("127.0.0.1", "::1"):
        assert banner(tmp_path, ipaddress.ip_address(host), 8000, "secret")[1] == []


def test_a_port_in_use_and_a_bad_host_end_in_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for args, expected in (
            (["--port", str(port)], f"port {port} is in use"),
            (["--host", "gpu-box"], "--host 'gpu-box': give an IP address"),
            (["--host", "192.0.2.1", "--port", "0"], "not an address of this box"),  # TEST-NET-1
            (["--port", "70000"], "--port 70000: give a port from 1 to 65535"),
        ):
            process = _serve_process(*args)
            stdout, stderr = process.communicate(timeout=STARTUP_S)
            assert process.returncode == 2, (args, stdout, stderr)
            assert stderr.startswith("loratop serve: ") and expected in stderr and stderr.count("\n") == 1, stderr
            assert stdout == "", stdout


# --- the size a browser asks for, and the end of a connection (no browser) -----------------

CURSOR_TO = re.compile(r"\x1b\[(\d+);(\d+)H")


def drawn_extent(text: str) -> tuple[int, int]:
    """(columns, rows) that terminal output reaches: Textual starts each line with a cursor move."""
    columns = rows = 0
    parts = CURSOR_TO.split(text)  # before the first move, then (row, column, what follows) for each
    for row, column, after in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        rows = max(rows, int(row))
        columns = max(columns, int(column) - 1 + len(screen_text(after).split("\n")[0]))
    return columns, rows


async def _drawn_until(websocket: aiohttp.ClientWebSocketResponse, rows: int) -> tuple[int, int]:
    """Read the app's frames until one reaches row ``rows``; the extent of all of them."""
    extent = (0, 0)
    while extent[1] < rows:
        message = await websocket.receive(timeout=SCREEN_S)
        assert message.type == aiohttp.WSMsgType.BINARY, message
        drawn = drawn_extent(message.data.decode("utf-8", "replace"))  # a frame is one message: whole lines
        extent = (max(extent[0], drawn[0]), max(extent[1], drawn[1]))
    return extent


@pytest.mark.faults
def test_a_huge_terminal_asked_for_is_bounded(runs: Path, serve: Callable[..., Served]) -> None:
    served = serve("--runs-dir", str(runs), "--port", "0")
    url = served.url()
    base = f"http://127.0.0.1:{_port(url)}"

    async def check() -> None:
        _, _, cookies = await _get(url)
        async with (
            aiohttp.ClientSession(cookies=cookies) as session,
            session.ws_connect(
                f"{base.replace('http', 'ws')}/ws?width=999999&height=30", headers={"Origin": base}, max_msg_size=0
            ) as websocket,
        ):
            assert await _drawn_until(websocket, rows=30) == (MAX_COLUMNS, 30)
            await websocket.send_json(["resize", {"width": "wide", "height": None}])  # not numbers: dropped
            await websocket.send_json(["resize", {"width": 20000, "height": 20000}])
            assert await _drawn_until(websocket, rows=MAX_ROWS) == (MAX_COLUMNS, MAX_ROWS)

    asyncio.run(check())
    assert "Traceback" not in served.finish()


def _wait_until(condition: Callable[[], Any], what: str, timeout: float = SCREEN_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)
    return found


def _app_of(served: Served) -> psutil.Process:
    """The app process the server started for the one connection open (its child, running: see ``RawTab``)."""
    children = _wait_until(lambda: psutil.Process(served.process.pid).children(), "app process", STARTUP_S)
    assert len(children) == 1, children
    return children[0]


class RawTab:
    """A browser tab's websocket, by hand on a socket: it can stop reading, and go without a goodbye.

    A small receive buffer, so that a tab that reads nothing soon holds the server back.
    """

    def __init__(self, url: str, width: int, height: int) -> None:
        port, token = _port(url), _token(url)
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.socket.settimeout(STARTUP_S)
        self.socket.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.socket.sendall(
            f"GET /ws?width={width}&height={height}&token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Origin: http://127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.socket.recv(1)  # one byte at a time: nothing past the handshake is read
            assert chunk, f"the server closed the handshake: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 "), head
        # The app's first bytes, peeked at (still unread): it runs. Until its exec a child is
        # half made, and one stopped then would hold the server in vfork().
        assert self.socket.recv(1, socket.MSG_PEEK), "the server closed the websocket"

    def send(self, opcode: int, payload: bytes) -> None:
        """One frame, masked as a client's must be (a short one: its length fits in 7 bits)."""
        assert len(payload) < 126, payload
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.socket.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def resize(self, width: int, height: int) -> None:
        self.send(0x1, json.dumps(["resize", {"width": width, "height": height}]).encode())

    def close(self) -> None:
        """Close as a closing tab does ("going away"), and drop what was never read (a reset)."""
        with contextlib.suppress(OSError):
            self.send(0x8, struct.pack("!H", 1001))
        self.socket.close()


def _stdout_backed_up(app: psutil.Process) -> bool:
    """The app is stuck writing to its stdout: nobody reads it (Linux ``/proc``).

    One of its threads sleeps in the kernel's pipe write (its ``wchan``); where the kernel
    hides that, its stdout pipe (reopened through ``/proc``, no byte taken) is all but full.
    """
    for task in Path(f"/proc/{app.pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that has just ended
            if "pipe_write" in (task / "wchan").read_text():
                return True
    fd = os.open(f"/proc/{app.pid}/fd/1", os.O_RDONLY | os.O_NONBLOCK)
    try:
        queued = int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, bytes(4)), sys.byteorder)
        return queued > fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) - select.PIPE_BUF
    finally:
        os.close(fd)


def _repaint(app: psutil.Process, tab: RawTab, widths: Iterator[int]) -> None:
    """Resize the tab until the app has written a repaint's worth more, or its stdout is backed up.

    Each resize asks for a width not asked for just before (nor the one it opened at): Textual
    keeps only the newest of the resizes it has not handled yet, and one back to the size it
    already has repaints nothing. Asked again after :data:`RESIZE_AGAIN_S` without progress,
    which also keeps the server hearing from the tab, as a live browser's pongs would (a tab
    silent for the server's heartbeat is dropped, and its app ended).
    """
    written = app.io_counters().write_chars
    deadline = time.monotonic() + SCREEN_S
    while True:
        tab.resize(next(widths), MAX_ROWS - 1)
        again = time.monotonic() + RESIZE_AGAIN_S
        while time.monotonic() < again:
            assert app.is_running(), "the app ended with its tab still open (the server's heartbeat gave up on it?)"
            if _stdout_backed_up(app) or app.io_counters().write_chars > written + 50_000:
                return
            time.sleep(0.05)
        if time.monotonic() > deadline:
            raise AssertionError(f"no repaint within {SCREEN_S} s")


def _backed_up_for_good(app: psutil.Process) -> bool:
    """Still stuck a second on, with no write finished meanwhile: not a server that is merely behind.

    (A false "for good" only makes the test milder; it cannot fail a server that works.)
    """
    written = app.io_counters().write_chars
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if not _stdout_backed_up(app) or app.io_counters().write_chars != written:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.faults
def test_a_tab_that_fell_behind_then_closed_ends_its_app(runs: Path, serve: Callable[..., Served]) -> None:
    """It read nothing while the app repainted; the server stopped reading the app, whose writes
    blocked. Closing the tab must end the app all the same."""
    served = serve("--runs-dir", str(runs), "--port", "0")
    tab = RawTab(served.url(), MAX_COLUMNS, MAX_ROWS)
    try:
        app = _app_of(served)
        widths = itertools.cycle(range(MAX_COLUMNS - 40, MAX_COLUMNS))
        for _ in range(80):  # each a full screen (~0.4 MB); the socket buffers hold a few MB
            _repaint(app, tab, widths)
            if _stdout_backed_up(app) and _backed_up_for_good(app):
                break
        else:
            raise AssertionError("the app's output never backed up: the server read all of it")
    finally:
        tab.close()
    _, alive = psutil.wait_procs([app], timeout=APP_QUIT_GRACE_S + 10)
    assert not alive, f"the app outlived its connection: {alive}"
    assert "Traceback" not in served.finish()


@pytest.mark.faults
def test_an_app_that_will_not_quit_is_killed_when_its_tab_closes(runs: Path, serve: Callable[..., Served]) -> None:
    served = serve("--runs-dir", str(runs), "--port", "0")
    tab = RawTab(served.url(), 80, 24)
    try:
        app = _app_of(served)
        app.suspend()  # SIGSTOP: it reads no quit message, as a wedged app would not
    finally:
        tab.close()
    _, alive = psutil.wait_procs([app], timeout=APP_QUIT_GRACE_S + 10)
    assert not alive, f"the app outlived its connection: {alive}"
    assert "Traceback" not in served.finish()
