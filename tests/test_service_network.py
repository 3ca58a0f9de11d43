"""Who is asking, at the edge: X-Forwarded-For, IPv6 /64 grouping, the Host check, h11's malformed requests.

Unit checks on :mod:`freestems.service.network` and :mod:`freestems.service.connections`, then the same
rules through a real server on 127.0.0.1 (raw sockets where a client library would not send the request).
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from service_helpers import connect_session, error_of, receive
from starlette.requests import Request

from freestems.service.connections import Throttle, default_max_connections
from freestems.service.network import address_key, client_address, host_allowed
from freestems.service.settings import Settings, SettingsError


def request_with(headers: list[tuple[str, str]], peer: str = "127.0.0.1") -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers]
    return Request({"type": "http", "headers": raw, "client": (peer, 40000)})


# ---------------------------------------------------------------------------------------------- addresses


def test_the_last_hop_of_all_forwarded_lines_counts():
    # The client wrote the first line; the proxy appended its own (the peer it saw) as a second line.
    two_lines = request_with([("X-Forwarded-For", "198.51.100.9"), ("X-Forwarded-For", "203.0.113.7")])
    assert client_address(two_lines, trust_proxy=True) == "203.0.113.7"
    mixed = request_with([("X-Forwarded-For", "1.1.1.1, 2.2.2.2"), ("X-Forwarded-For", "3.3.3.3, 4.4.4.4")])
    assert client_address(mixed, trust_proxy=True) == "4.4.4.4"
    assert client_address(two_lines, trust_proxy=False) == "127.0.0.1"
    assert client_address(request_with([("X-Forwarded-For", " , ")]), trust_proxy=True) == "127.0.0.1"


def test_ipv6_clients_are_grouped_by_their_64():
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert address_key("[2001:db8:1:3::1]") == "2001:db8:1:3::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("192.0.2.2") != address_key("192.0.2.1")
    assert address_key("unknown") == "unknown"
    peer = request_with([], peer="2001:db8:1:2::99")
    assert client_address(peer) == "2001:db8:1:2::/64"
    forwarded = request_with([("X-Forwarded-For", "2001:db8:9:9:1::5")])
    assert client_address(forwarded, trust_proxy=True) == "2001:db8:9:9::/64"


# ---------------------------------------------------------------------------------------------- hosts


def test_host_patterns():
    loopback = Settings(host="127.0.0.1").hosts
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000", "[::1]", "127.0.0.1"):
        assert host_allowed(host, loopback), host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "x@127.0.0.1", "", None):
        assert not host_allowed(host, loopback), host
    named = ("example.org", "*.example.net", "[2001:db8::1]")
    assert host_allowed("example.org:443", named) and host_allowed("a.b.example.net", named)
    assert host_allowed("[2001:db8::1]:80", named)
    assert not host_allowed("example.net", named) and not host_allowed("badexample.org", named)
    assert host_allowed("anything", ("*",))


def test_the_default_hosts_follow_the_address(tmp_path):
    assert Settings(host="127.0.0.1").hosts == ("localhost", "127.0.0.1", "::1")
    assert Settings(host="::1").hosts == ("localhost", "127.0.0.1", "::1")
    assert Settings(host="0.0.0.0").hosts == ("*",)
    assert Settings(host="0.0.0.0", allowed_hosts=("stems.example.org",)).hosts == ("stems.example.org",)
    env = {"FREESTEMS_ALLOWED_HOSTS": "stems.example.org, *.example.net,[::1]"}
    assert Settings.from_env(env).hosts == ("stems.example.org", "*.example.net", "[::1]")
    for bad in ("https://example.org", "example.org:443", "a.*.org", "*example.org"):
        with pytest.raises(SettingsError, match="FREESTEMS_ALLOWED_HOSTS"):
            Settings(allowed_hosts=(bad,))


def test_connection_settings_are_validated():
    env = {"FREESTEMS_HEADER_TIMEOUT": "3", "FREESTEMS_MAX_CONNECTIONS": "100"}
    settings = Settings.from_env({**env, "FREESTEMS_MAX_CONNECTIONS_PER_ADDRESS": "5"})
    assert (settings.header_timeout, settings.max_connections, settings.max_connections_per_address) == (
        3.0,
        100,
        5,
    )
    for name, value in [
        ("header_timeout", 0),
        ("keep_alive_timeout", -1),
        ("max_connections", -1),
        ("max_connections_per_address", 0),
    ]:
        with pytest.raises(SettingsError, match=f"FREESTEMS_{name.upper()}"):
            Settings(**{name: value})


def test_the_derived_connection_cap_leaves_descriptors_for_files():
    assert default_max_connections(1024) == 768
    assert default_max_connections(128) == 64
    assert default_max_connections(1 << 20) == 4096
    assert default_max_connections(16) == 8


def test_the_throttle_counts_what_it_leaves_out():
    now = [0.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    assert throttle.ready() == 0
    assert [throttle.ready() for _ in range(5)] == [None] * 5
    now[0] = 10.5
    assert throttle.ready() == 5 and throttle.ready() is None


# ---------------------------------------------------------------------------------------------- server


def raw_exchange(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def json_error(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    parsed = json.loads(body)
    assert set(parsed) == {"error"}, parsed
    return status, parsed["error"]


POST = b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
MALFORMED = {
    "negative length": POST + b"Content-Length: -5\r\n\r\n",
    "two lengths": POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n",
    "bad chunk size": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "garbage line": b"\x16\x03\x01 hello there\r\n\r\n",
    "no host": b"GET /health HTTP/1.1\r\n\r\n",
}


def test_malformed_requests_get_the_json_error_shape(start_server):
    server = start_server(auth="none")
    for name, data in MALFORMED.items():
        status, error = json_error(raw_exchange(server.url, data))
        assert status == 400, name
        assert error["code"] == "bad_request", name
        assert "not valid HTTP/1.1" in error["message"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_foreign_host_is_refused_on_a_loopback_server(start_server):
    server = start_server()
    port = server.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert httpx.get(server.url + "/health", headers={"Host": host}).status_code == 200, host
    refused = httpx.get(server.url + "/health", headers={"Host": f"rebound.example:{port}"})
    assert refused.status_code == 400
    assert error_of(refused)["code"] == "invalid_host"
    # DNS rebinding: the page's Origin and the Host agree, so only the Host check stops the handshake.
    handshake = (
        f"GET /session HTTP/1.1\r\nHost: rebound.example:{port}\r\nOrigin: http://rebound.example:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    status, error = json_error(raw_exchange(server.url, handshake.encode()))
    assert status == 400 and error["code"] == "invalid_host"
    with connect_session(server) as ws:  # the server's own name still works
        assert receive(ws)["type"] == "challenge"


def test_allowed_hosts_can_name_the_public_host(start_server):
    server = start_server(allowed_hosts=("stems.example.org",))
    assert httpx.get(server.url + "/health", headers={"Host": "stems.example.org"}).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 400  # 127.0.0.1 is not in the list now
