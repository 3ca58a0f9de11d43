"""A tiny TCP proxy on 127.0.0.1 for client tests: it forwards bytes both ways and can cut connections.

    with CuttingProxy(server.url) as proxy:          # proxy.url: http://127.0.0.1:<port>
        proxy.cut_result_after(50_000)               # once: the result download dies after 50 kB
        ...
        proxy.cut_sockets()                          # now: every WebSocket through it closes

It sees the raw bytes: requests from the client (``seen_upstream``: request lines and headers, e.g. a
``Range`` header) and the first bytes of each answer (``seen_downstream``: e.g. ``206 Partial Content``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit


class CuttingProxy:
    def __init__(self, target_url: str) -> None:
        target = urlsplit(target_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.upstream: list[bytes] = []
        self.downstream: list[bytes] = []
        self.connections: list[_Pair] = []
        self.cut_after: int | None = None
        self.cuts = 0
        self.refusing = False
        self.refused = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    # ------------------------------------------------------------------------------------------ control

    def cut_result_after(self, size: int) -> None:
        """Once: the next connection that asks for a job's result is closed after ``size`` answer bytes."""
        self.cut_after = size

    def cut_sockets(self) -> int:
        """Close every open WebSocket connection through the proxy now; returns how many."""
        with self.lock:
            sockets = [pair for pair in self.connections if pair.websocket and not pair.closed]
        for pair in sockets:
            pair.close()
        self.cuts += len(sockets)
        return len(sockets)

    def cut_all(self) -> None:
        """Close every open connection through the proxy now."""
        with self.lock:
            pairs = [pair for pair in self.connections if not pair.closed]
        for pair in pairs:
            pair.close()

    def upstream_count(self, text: str) -> int:
        """How many client chunks (requests, mostly) started with ``text``."""
        with self.lock:
            return sum(1 for chunk in self.upstream if chunk.startswith(text.encode()))

    def seen_upstream(self, text: str) -> bool:
        with self.lock:
            return any(text.encode() in chunk for chunk in self.upstream)

    def seen_downstream(self, text: str) -> bool:
        with self.lock:
            return any(text.encode() in chunk for chunk in self.downstream)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            pairs = list(self.connections)
        for pair in pairs:
            pair.close()

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ pumping

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                self.refused += 1
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = _Pair(client, server)
            with self.lock:
                self.connections.append(pair)
            threading.Thread(target=self._pump_up, args=(pair,), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(pair,), daemon=True).start()

    def _pump_up(self, pair: _Pair) -> None:
        while True:
            try:
                data = pair.client.recv(65536)
            except OSError:
                data = b""
            if not data:
                pair.close()
                return
            head = data[:4096]
            with self.lock:
                self.upstream.append(head)
                if head.startswith(b"GET /session"):
                    pair.websocket = True
                if head.startswith(b"GET /jobs/") and b"/result" in head.split(b"\r\n", 1)[0]:
                    pair.result_bytes = 0  # count the answer to this request from now on
                    if self.cut_after is not None:
                        pair.cut_at, self.cut_after = self.cut_after, None
            try:
                pair.server.sendall(data)
            except OSError:
                pair.close()
                return

    def _pump_down(self, pair: _Pair) -> None:
        while True:
            try:
                data = pair.server.recv(16384)
            except OSError:
                data = b""
            if not data:
                pair.close()
                return
            with self.lock:
                if data.startswith(b"HTTP/"):
                    self.downstream.append(data[:512])
                if pair.result_bytes is not None:
                    pair.result_bytes += len(data)
                counted = pair.result_bytes if pair.cut_at is not None else None
                cut = counted is not None and counted > pair.cut_at
            if cut:
                keep = len(data) - (pair.result_bytes - pair.cut_at)  # type: ignore[operator]
                with contextlib.suppress(OSError):
                    pair.client.sendall(data[: max(0, keep)])
                time.sleep(0.05)
                self.cuts += 1
                pair.close()
                return
            try:
                pair.client.sendall(data)
            except OSError:
                pair.close()
                return


class _Pair:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.websocket = False
        self.result_bytes: int | None = None
        self.cut_at: int | None = None
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for side in (self.client, self.server):
            with contextlib.suppress(OSError):
                side.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                side.close()
