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
import os
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from loratop.trainer.distributed import python_module

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
TEMPLATES = Path(__file__).resolve().parent / "serve_templates"
"""Our copy of textual-serve's page template: nothing in it is fetched from outside."""
TOKEN_PARAM = "token"
FORBIDDEN = "forbidden: open the link (with its ?token=...) that `loratop serve` printed when it started\n"
WRONG_ORIGIN = "forbidden: this websocket may be opened only by the page `loratop serve` sent\n"
APP_QUIT_GRACE_S = 5.0
"""How long an app process has to quit when its browser tab goes (then it is killed)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServeError(Exception):
    """A mistake in the arguments or a port that cannot be had: one line for the user."""


def app_command(runs_dir: Path) -> str:
    """The shell command textual-serve runs per browser connection: plain ``loratop`` on ``runs_dir``.

    The same interpreter and the module the ``loratop`` console script calls, with the
    working folder left off ``sys.path`` as the launcher does for the trainer. ``exec``: the
    shell textual-serve starts it with becomes the app, one process to stop.
    """
    return "exec " + shlex.join([*python_module("loratop.tui.cli"), "--runs-dir", str(runs_dir.resolve())])


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
    """textual-serve's app process, in a session of its own, and killed if it will not quit.

    Its own session: the Ctrl+C typed in the terminal running ``loratop serve`` reaches the
    server only, which then asks each app to quit (no half-imported app's traceback).
    """

    async def _open_app_process(self, width: int = 80, height: int = 24) -> asyncio.subprocess.Process:
        self._process = process = await asyncio.create_subprocess_shell(
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

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(super().stop(), APP_QUIT_GRACE_S)
        except asyncio.TimeoutError:
            process = self._process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # the app leads a session of its own


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
        """textual-serve's handler, starting :class:`_AppProcess` and known to :meth:`on_shutdown`."""
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
                write_bytes=websocket.send_bytes,
                write_str=websocket.send_str,
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
        """Quiet: :func:`serve` says where to look once the port is ours."""

    async def on_shutdown(self, app: web.Application) -> None:
        """Close every browser connection; each handler then asks its app to quit."""
        await asyncio.gather(*(ws.close() for ws in list(self._websockets)), return_exceptions=True)

    async def run(self) -> None:
        """Serve until SIGINT, SIGTERM or SIGHUP, then close every app and return."""
        runner = web.AppRunner(await self._make_app(), handle_signals=False, access_log=None)
        await runner.setup()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, stop.set)
        try:
            await web.SockSite(runner, self.listener).start()
            await stop.wait()
        finally:
            await runner.cleanup()


def banner(
    runs_dir: Path, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, token: str
) -> tuple[list[str], list[str]]:
    """What ``loratop serve`` prints at start: (stdout lines, stderr warnings)."""
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
    if wildcard:
        warnings.append(
            f"warning: listening on every interface ({address}): anyone who can reach port {port} and has the "
            f"token can drive the dashboard (start and stop runs); also at http://{socket.gethostname()}:{port}/"
            f"?{TOKEN_PARAM}={token}"
        )
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
    print("\n".join(lines), flush=True)
    for line in warnings:
        print(line, file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl+C as the loop closes: still no traceback
        asyncio.run(LoratopServer(app_command(runs_dir), listener, token).run())
