"""Serving the emulator: blocking for ``backfill emulator``, or in a thread for tests and jobs."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from backfill.emulator.app import Emulator
from backfill.emulator.config import EmulatorConfig
from backfill.errors import ConfigError, EmulatorError


def _bind(config: EmulatorConfig) -> socket.socket:
    """Bind before serving so ``port=0`` yields a known port; loopback only, by design."""
    host = "127.0.0.1" if config.host == "localhost" else config.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"the emulator binds to loopback only; {config.host!r} is not loopback")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, config.port))
    except OSError as exc:
        sock.close()
        raise EmulatorError(f"cannot listen on {host}:{config.port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn(emulator: Emulator) -> uvicorn.Server:
    config = uvicorn.Config(
        emulator.app,
        http="httptools",  # the drop fault relies on this protocol's per-request cycle
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
        backlog=2048,
    )
    return uvicorn.Server(config)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed: it roughly doubles what one core can answer."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop has no Windows build
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def serve(config: EmulatorConfig, on_ready: Callable[[str], None]) -> None:
    """Serve until interrupted; ``on_ready(url)`` once connections are accepted."""
    emulator = Emulator(config)
    sock = _bind(config)
    server = _uvicorn(emulator)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn sets a flag
            await asyncio.sleep(0.01)
        if server.started:
            on_ready(_url(sock))
        await task

    try:
        _run_loop(main())
    finally:
        emulator.close()
        sock.close()


class EmulatorServer:
    """An emulator on a free loopback port in a background thread::

    with EmulatorServer(EmulatorConfig(seed=path)) as emu:
        httpx.get(emu.url + "/__emulator__/stats")
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.emulator = Emulator(config or EmulatorConfig())
        self.config = self.emulator.config  # a seed or state file may name the Segment space
        self._sock = _bind(self.config)
        self.url = _url(self._sock)
        self._server = _uvicorn(self.emulator)
        self._thread = threading.Thread(target=self._run, name="backfill-emulator", daemon=True)
        self._error: BaseException | None = None

    @property
    def auth(self) -> tuple[str, str]:
        return (self.config.username, self.config.password)

    def _run(self) -> None:
        try:
            _run_loop(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by start()
            self._error = exc

    def start(self) -> EmulatorServer:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise EmulatorError(f"emulator failed to start: {self._error!r}")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self.emulator.close()
        self._sock.close()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.url + "/__emulator__/stats").json()
        return data

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
