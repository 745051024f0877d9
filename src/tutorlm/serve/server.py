"""Run the app with uvicorn: in the foreground (``tutorlm serve``) or in a background
thread on a free loopback port (tests, benchmarks, the screenshot script).

The connection limits of ``ServeConfig`` are applied here, below the app: uvicorn
bounds the headers' size (h11's ``max_incomplete_event_size``) and an idle kept-alive
connection (``timeout_keep_alive``), but neither the time a client may take to send
its headers nor how many connections are open. :class:`GuardedH11Protocol` adds both.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

from tutorlm.serve.config import ServeConfig


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _limits(app) -> ServeConfig:
    return getattr(app.state, "config", None) or ServeConfig()


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type:
    """uvicorn's h11 protocol with a header deadline and a connection cap.

    A connection must send a complete request head within ``header_timeout_s`` of
    opening, or of its previous reply ending; else it is closed. A connection opened
    while ``max_connections`` are open is closed at once.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # a request head has arrived
                self._disarm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def _config(app, **kwargs):
    import uvicorn

    limits = _limits(app)
    return uvicorn.Config(
        app,
        log_level=kwargs.pop("log_level", "info"),
        http=guarded_protocol(limits.header_timeout_s, limits.max_connections),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        **kwargs,
    )


def run_server(app, host: str, port: int, *, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.Server(_config(app, host=host, port=port, log_level=log_level)).run()


class BackgroundServer:
    """The app on ``127.0.0.1`` and a free port, in a daemon thread, for ``with`` blocks.

    The socket is bound before the thread starts, so ``url`` is valid at once and
    no other process can take the port in between.
    """

    def __init__(self, app, *, host: str = "127.0.0.1", log_level: str = "warning"):
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(_config(app, log_level=log_level))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        limit = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > limit:
                raise RuntimeError("the background server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self._socket.close()
