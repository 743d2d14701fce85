"""``loratop serve``: the dashboard in a browser, through an SSH tunnel (textual-serve).

textual-serve starts one app process per browser connection (the home screen on the runs
folder, as plain ``loratop`` shows it) and relays its terminal over a websocket to
xterm.js in the page. Everything the page loads comes from this server: textual-serve's
JavaScript, CSS and fonts ship in its package, and the page is our own copy of its
template (``serve_templates/app_index.html``) without its Google Fonts link.

On a shared GPU box anyone there can reach ``127.0.0.1``, so a port is no secret: the
link printed at start carries a random token; opening it sets an HttpOnly, SameSite=Strict
cookie, and every request without that cookie (or the token) gets a 403. The websocket
must also come from a page of this server (its ``Origin`` matches its ``Host``).

A browser says how big its terminal is; the app gets at most :data:`MAX_COLUMNS` x
:data:`MAX_ROWS`. When a websocket ends, for whatever reason, its app is asked to quit
and killed :data:`APP_QUIT_GRACE_S` later if it has not.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import hashlib
import hmac
import ipaddress
import logging
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from loratop.core.distributed import python_module

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
TEMPLATES = Path(__file__).resolve().parent / "serve_templates"
"""Our copy of textual-serve's page template: nothing in it is fetched from outside."""
TOKEN_PARAM = "token"
FORBIDDEN = "forbidden: open the link (with its ?token=...) that `loratop serve` printed when it started\n"
WRONG_ORIGIN = "forbidden: this websocket may be opened only by the page `loratop serve` sent\n"
APP_QUIT_GRACE_S = 5.0
"""How long an app process has to quit when its browser connection ends (then it is killed)."""
MAX_COLUMNS = 500
"""The widest terminal an app gets, whatever a browser asks for (in its URL or a resize)."""
MAX_ROWS = 200
"""The tallest. A 4K screen at the page's 16 px font is about 400 x 110 cells: this is more
than a screen shows, and at 100,000 cells a full repaint stays near half a megabyte, where a
tab asking for 20000 x 20000 cost its app gigabytes."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Sent = TypeVar("_Sent")


class ServeError(Exception):
    """A mistake in the arguments or a port that cannot be had: one line for the user."""


def app_command(runs_dir: Path) -> str:
    """The shell command textual-serve runs per browser connection: plain ``loratop`` on ``runs_dir``.

    The same interpreter and the module the ``loratop`` console script calls, with the
    working folder left off ``sys.path`` as the launcher does for the trainer. ``exec``: the
    shell textual-serve starts it with becomes the app, one process to stop.
    """
    return "exec " + shlex.join([*python_module("loratop.cli.main"), "--runs-dir", str(runs_dir.resolve())])


def listen_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP address ``--host`` names (``localhost`` is 127.0.0.1); no name is looked up.

    Raises:
        ServeError: ``host`` is not an IP address.
    """
    if host == "localhost":
        return ipaddress.IPv4Address(DEFAULT_HOST)
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ServeError(
            f"--host {host!r}: give an IP address of this box to listen on: 127.0.0.1 (the default), ::1, "
            "or 0.0.0.0 for every interface"
        ) from None


def open_listener(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> socket.socket:
    """A listening socket on ``address:port`` (port 0: any free port).

    Raises:
        ServeError: the port is out of range, in use, not allowed, or the address is not this box's.
    """
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port}: give a port from 1 to 65535 (or 0 for any free one)")
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        return socket.create_server((str(address), port), family=family, backlog=128)
    except OSError as exc:
        where = f"{_url_host(address)}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} is in use on {address}; pick another with --port N") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ServeError(f"--host {address}: not an address of this box; cannot listen on {where}") from None
        if exc.errno == errno.EACCES:
            raise ServeError(
                f"not allowed to listen on {where} (ports below 1024 need root); use --port 8000"
            ) from None
        raise ServeError(f"cannot listen on {where}: {exc.strerror or exc}") from None


def terminal_size(width: object, height: object) -> tuple[int, int] | None:
    """The (columns, rows) an app gets for the size a browser asked: 1 to :data:`MAX_COLUMNS` x :data:`MAX_ROWS`.

    ``None`` when either is not a whole number (a resize message from a confused or
    hostile client): the app keeps its size.
    """
    if not (type(width) is int and type(height) is int):  # not a float, a string, a bool
        return None
    return min(max(width, 1), MAX_COLUMNS), min(max(height, 1), MAX_ROWS)


def _url_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def _same_token(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _origin_matches(request: web.Request) -> bool:
    """A browser's websocket comes from a page of this server: its ``Origin`` names our ``Host``.

    Browsers always send ``Origin`` on a websocket; a client without one (a script) still
    needs the token or cookie, which is the guard that matters.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()


class _AppProcess(AppService):
    """textual-serve's app process, bounded in size, in a session of its own, and ended with its connection.

    Its own session: the Ctrl+C typed in the terminal running ``loratop serve`` reaches the
    server only, which then asks each app to quit (no half-imported app's traceback).

    What this relies on in textual-serve 1.1 (``textual_serve/app_service.py``, ``server.py``):
    the server tells an app its size only through ``start(width, height)`` and
    ``set_terminal_size(width, height)``, so bounding both bounds every size. ``stop()``
    sends the ``quit`` message, then waits for the task that reads the app's stdout: that
    ends when the app closes its stdout, not when the app ends, and it raises whatever
    sending to the browser raised. ``_open_app_process`` is the one place that starts the
    process: ours starts it the same way, in a new session, and keeps the handle.
    """

    app_process: asyncio.subprocess.Process | None = None
    """The process this object started (``None`` until then): the only one it ever signals."""

    async def _open_app_process(self, width: int = 80, height: int = 24) -> asyncio.subprocess.Process:
        self._process = self.app_process = process = await asyncio.create_subprocess_shell(
            self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._build_environment(width=width, height=height),
            start_new_session=True,
        )
        assert process.stdin is not None
        self._stdin = process.stdin
        return process

    async def start(self, width: int, height: int) -> None:
        """Start the app at the size the browser asked for, bounded (:func:`terminal_size`)."""
        await super().start(*(terminal_size(width, height) or (80, 24)))

    async def set_terminal_size(self, width: int, height: int) -> None:
        """Pass a browser's resize on, bounded (:func:`terminal_size`); one that is not numbers is dropped."""
        size = terminal_size(width, height)
        if size is not None:
            await super().set_terminal_size(*size)

    async def stop(self) -> None:
        """Ask the app to quit; kill it if it has not ended :data:`APP_QUIT_GRACE_S` later.

        Killed at once if this is cancelled (the server going down hard): no way out leaves it
        running. Signals only the process :meth:`_open_app_process` started, through its
        handle, and only while asyncio has not reaped it (so its pid is still its own).
        """
        process = self.app_process
        quitting = asyncio.ensure_future(self._quit())
        try:
            # Not wait_for: cancelling textual-serve's stop cancels its stdout reader, which
            # swallows the cancel, so the stop goes on waiting and no timeout is ever raised.
            await asyncio.wait({quitting}, timeout=APP_QUIT_GRACE_S)
        finally:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()  # not SIGTERM first: Textual's handler for it only queues the same quit
        await quitting  # over soon once the app has ended: its stdout closes, asyncio reaps it

    async def _quit(self) -> None:
        """textual-serve's stop (the ``quit`` message, the end of the stdout reader), then the process's end."""
        await super().stop()
        if self.app_process is not None:
            await self.app_process.wait()


def _unless_gone(send: Callable[[_Sent], Awaitable[None]]) -> Callable[[_Sent], Awaitable[None]]:
    """``send`` to the browser; once the connection is lost, the app's output is dropped.

    Dropped, but still read to its end: an app whose stdout pipe fills blocks in its write and
    never quits. (textual-serve's reader stops at the first failed send: a tab that had fallen
    behind a big repaint and then closed left its app blocked, for good.)
    """

    async def send_or_drop(data: _Sent) -> None:
        with contextlib.suppress(ConnectionError):  # aiohttp's "Connection lost", "Cannot write to closing transport"
            await send(data)

    return send_or_drop


class LoratopServer(Server):
    """textual-serve's server behind a token, with URLs built from each request's ``Host``.

    Args:
        command: The app command (:func:`app_command`).
        listener: A bound, listening socket (:func:`open_listener`).
        token: The secret the printed link carries (``secrets.token_urlsafe``).
    """

    def __init__(self, command: str, listener: socket.socket, token: str) -> None:
        host, port = listener.getsockname()[:2]
        super().__init__(command, host=host, port=port, title="loratop", templates_path=TEMPLATES)
        self.listener = listener
        self.token = token
        self.cookie_name = f"loratop_serve_{hashlib.sha256(token.encode()).hexdigest()[:12]}"
        """Named after the token, so two ``loratop serve`` on one box (cookies ignore ports) keep apart."""
        self._websockets: set[web.WebSocketResponse] = set()

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._guard)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Only the token's holder gets in: the index page with it sets the cookie the rest needs."""
        by_token = _same_token(request.query.get(TOKEN_PARAM), self.token)
        if not (by_token or _same_token(request.cookies.get(self.cookie_name), self.token)):
            return web.Response(status=403, text=FORBIDDEN)
        if request.path == "/ws" and not _origin_matches(request):
            return web.Response(status=403, text=WRONG_ORIGIN)
        response = await handler(request)
        if request.path == "/":
            response.headers["Cache-Control"] = "no-store"
            response.headers["Referrer-Policy"] = "no-referrer"
            if by_token:
                response.set_cookie(self.cookie_name, self.token, httponly=True, samesite="Strict", path="/")
        return response

    @aiohttp_jinja2.template("app_index.html")
    async def handle_index(self, request: web.Request) -> dict[str, Any]:
        """The page, its URLs on the ``Host`` the browser used (``ssh -L 9000:...:8000`` works).

        textual-serve builds them from the host and port it listens on, which a tunnel's
        other local port breaks. The context keys are textual-serve's.
        """
        router = request.app.router
        base = f"{request.scheme}://{request.host}"
        websocket_scheme = "wss" if request.scheme == "https" else "ws"
        return {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": f"{websocket_scheme}://{request.host}{router['websocket'].url_for()}",
            "config": {"static": {"url": f"{base}{router['static'].url_for(filename='/')}".rstrip("/") + "/"}},
            "application": {"name": self.title},
        }

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """textual-serve's handler, starting :class:`_AppProcess` and known to :meth:`on_shutdown`.

        However the connection ends (the tab closed, the network gone, a message that is not
        textual-serve's, the server stopping), ``finally`` stops its app.
        """
        websocket = web.WebSocketResponse(heartbeat=15)
        width = to_int(request.query.get("width", "80"), 80)
        height = to_int(request.query.get("height", "24"), 24)
        app_service: _AppProcess | None = None
        self._websockets.add(websocket)

        async def close() -> None:
            await websocket.close()

        try:
            await websocket.prepare(request)
            app_service = _AppProcess(
                self.command,
                write_bytes=_unless_gone(websocket.send_bytes),
                write_str=_unless_gone(websocket.send_str),
                close=close,
                download_manager=self.download_manager,
                debug=self.debug,
            )
            await app_service.start(width, height)
            await self._process_messages(websocket, app_service)
        except asyncio.CancelledError:
            await websocket.close()
        except Exception as error:  # a bug, or a client that sent nonsense: logged, the server goes on
            logging.getLogger("textual-serve").exception(error)
        finally:
            self._websockets.discard(websocket)
            if app_service is not None:
                await app_service.stop()
        return websocket

    async def on_startup(self, app: web.Application) -> None:
        """Quiet: :func:`serve` says where to look once the site is up (:meth:`run`'s ``ready``)."""

    async def on_shutdown(self, app: web.Application) -> None:
        """Close every browser connection; each handler then asks its app to quit."""
        await asyncio.gather(*(ws.close() for ws in list(self._websockets)), return_exceptions=True)

    async def run(self, ready: Callable[[], None] = lambda: None) -> None:
        """Serve until SIGINT, SIGTERM or SIGHUP, then close every app and return.

        ``ready()`` is called once the site is up and those signals are ours: a Ctrl+C that
        follows the link it prints stops the server cleanly (not a ``KeyboardInterrupt``).
        """
        runner = web.AppRunner(await self._make_app(), handle_signals=False, access_log=None)
        await runner.setup()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, stop.set)
        try:
            await web.SockSite(runner, self.listener).start()
            ready()
            await stop.wait()
        finally:
            await runner.cleanup()


def banner(
    runs_dir: Path, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, token: str
) -> tuple[list[str], list[str]]:
    """What ``loratop serve`` prints at start: (stdout lines, stderr warnings).

    A warning for any address but loopback: the server speaks plain HTTP, so on a network
    the token and every screen and keystroke can be read on the way; an SSH tunnel to
    127.0.0.1 encrypts them.
    """
    wildcard = address.is_unspecified
    loopback = "::1" if address.version == 6 else DEFAULT_HOST
    on_box = loopback if wildcard else str(address)
    target = f"[{on_box}]" if ":" in on_box else on_box
    box_url = f"http://{target}:{port}/?{TOKEN_PARAM}={token}"
    laptop_url = f"http://127.0.0.1:{port}/?{TOKEN_PARAM}={token}"
    tunnel = f"ssh -L {port}:{target}:{port} {getpass.getuser()}@{socket.gethostname()}"
    where = "that link" if laptop_url == box_url else laptop_url
    lines = [
        f"loratop serve: the dashboard on {runs_dir}/ at",
        f"  {box_url}",
        f"From a laptop: {tunnel}   then open {where} there.",
        "Only that link (its token) opens it; nothing is fetched from outside. Ctrl+C stops.",
    ]
    warnings = []
    if not address.is_loopback:
        where = f"every interface ({address})" if wildcard else str(address)
        also = f"; also at http://{socket.gethostname()}:{port}/?{TOKEN_PARAM}={token}" if wildcard else ""
        warnings += [
            f"warning: listening on {where} over plain HTTP: the link's token and the whole session (every screen, "
            "every key) travel unencrypted, readable by anyone on the network path; anyone who can reach port "
            f"{port} and has the token can drive the dashboard (start and stop runs){also}",
            f"warning: instead, serve on {DEFAULT_HOST} (the default) and open it through an SSH tunnel, which "
            f"encrypts it: ssh -L {port}:{DEFAULT_HOST}:{port} {getpass.getuser()}@{socket.gethostname()}",
        ]
    return lines, warnings


def serve(runs_dir: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve the home screen on ``runs_dir`` until Ctrl+C.

    Raises:
        ServeError: a bad ``host`` or ``port``, or a port already in use.
    """
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ServeError(f"--runs-dir {runs_dir}: not a folder")
    address = listen_address(host)
    listener = open_listener(address, port)
    token = secrets.token_urlsafe(32)
    lines, warnings = banner(runs_dir, address, listener.getsockname()[1], token)

    def announce() -> None:
        print("\n".join(lines), flush=True)
        for line in warnings:
            print(line, file=sys.stderr, flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl+C as the loop closes: still no traceback
        asyncio.run(LoratopServer(app_command(runs_dir), listener, token).run(announce))
