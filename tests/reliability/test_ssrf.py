"""Image fetching under attack: the SSRF matrix, the key staying home, and image bombs.

Every test runs under a network guard: any connect to an address outside 127.0.0.0/8 and ::1,
and any name lookup, fails the test (and is blocked before it leaves the machine). Public and
internal hosts are simulated with the fetcher's injectable resolver and the local fake server;
addresses that must be refused are refused before a socket exists.

Figures go to bench/results/ssrf.json and into a table printed at the end of the module
(docs/reliability.md quotes them).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from backend.service.app import create_app
from backend.service.config import ServiceConfig
from backend.service.images import ImageFetcher, ImageFetchError, ImageLimits, decode_image
from backend.service.ls_auth import LabelStudioAuth
from backend.service.ssrf import SsrfGuard, SsrfPolicy, SsrfSafeHTTPAdapter, ssrf_safe_session
from tests.service.conftest import (
    LEGACY_TOKEN,
    FakeLabelStudioState,
    FakeMethods,
    _Handler,
    load_recorded,
    png_bytes,
    sample_image,
)

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "ssrf.json"
CONFIG_XML = load_recorded("setup.json")["body"]["schema"]
LIMITS = ImageLimits(max_bytes=5_000_000, timeout_s=5.0)
METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
FAKE_PUBLIC_ADDRESS = "93.184.216.34"  # never connected to: the network guard would fail the test

FIGURES: dict[str, list] = {"ssrf_matrix": [], "key": [], "image_bombs": []}


# ---- the network guard -----------------------------------------------------------------------


def _loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class NetworkGuard:
    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []
        self.violations: list[str] = []

    def connect(self, address) -> None:
        if not isinstance(address, tuple):
            return  # AF_UNIX
        self.connects.append((address[0], address[1]))
        if not _loopback(address[0]):
            self.violations.append(f"connect to {address!r}")
            raise ConnectionRefusedError("network guard: only loopback may be reached in tests")

    def lookup(self, host) -> None:
        if isinstance(host, bytes):
            host = host.decode()
        if host is None:
            return
        try:
            ipaddress.ip_address(str(host).split("%", 1)[0])
        except ValueError:
            self.violations.append(f"name lookup of {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, "network guard: no DNS in tests") from None


@pytest.fixture(autouse=True)
def network(monkeypatch):
    guard = NetworkGuard()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_create, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def connect(sock, address):
        guard.connect(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        guard.connect(address)
        return real_connect_ex(sock, address)

    def create_connection(address, *args, **kwargs):
        guard.lookup(address[0])
        return real_create(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        guard.lookup(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield guard
    assert guard.violations == [], guard.violations


# ---- servers: Label Studio, and an "image host" that redirects ---------------------------------


class _RedirectingHandler(_Handler):
    def do_GET(self) -> None:
        redirect = self.server.redirects.get(self.path)
        if redirect is None:
            return super().do_GET()
        location, needs_auth = redirect
        self.server.state.requests.append(("GET", self.path, self.headers.get("Authorization")))
        if needs_auth and not self._authorized():
            return self._send(401, b'{"detail": "no"}', "application/json")
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RedirectingHandler)
        self.state = FakeLabelStudioState()
        self.redirects: dict[str, tuple[str, bool]] = {}

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _serve():
    server = Server()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def ls():
    server = _serve()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def host_b():
    server = _serve()
    yield server
    server.shutdown()
    server.server_close()


def resolver_for(table: dict[str, list[str]], calls: list | None = None):
    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise OSError("no such name")
        return list(table[host])

    return resolve


# ---- the SSRF matrix -------------------------------------------------------------------------

PNG = png_bytes(sample_image(32, 24))


def _matrix_cases(ls: Server, b: Server) -> tuple[list[dict], dict, tuple]:
    """(name, reference, what the fetcher knows, expected) for one fake Label Studio ``ls`` and an
    image host ``b``; both on loopback, so that a guard failure would really connect and fetch."""
    p = b.port
    b.state.public["/img.png"] = PNG
    b.redirects["/to-metadata"] = (METADATA, False)
    b.redirects["/to-decimal"] = (f"http://2130706433:{p}/img.png", False)
    b.redirects["/to-loopback-name"] = (f"http://loopback.example:{p}/img.png", False)
    b.redirects["/to-file"] = ("file:///etc/passwd", False)
    b.redirects["/to-ls-upload"] = (f"{ls.url}/data/upload/1/secret.png", False)
    for hop in range(5):
        b.redirects[f"/loop{hop}"] = (f"/loop{hop + 1}", False)
    b.redirects["/loop5"] = ("/img.png", False)
    ls.state.protected["/data/upload/1/a.png"] = PNG
    ls.state.protected["/data/upload/1/secret.png"] = PNG
    ls.state.protected["/api/projects/1/export"] = b'[{"secret": "annotations"}]'
    presign = "/tasks/7/presign/?fileuri=czM6Ly9idWNrZXQvaW1nLnBuZw%3D%3D"
    signed = f"http://bucket.s3.example:{p}/img.png?X-Amz-Signature=SECRETSIGNATURE"
    b.state.public["/img.png?X-Amz-Signature=SECRETSIGNATURE"] = PNG
    ls.redirects[presign] = (signed, True)
    ls.redirects["/tasks/8/presign/?fileuri=eA%3D%3D"] = (f"http://10.0.0.1:{p}/img.png?X-Amz-Signature=S", True)
    names = {
        "loopback.example": ["127.0.0.1"],
        "mixed.example": [FAKE_PUBLIC_ADDRESS, "10.0.0.1"],
        "public.example": ["127.0.0.1"],  # allow-listed below: plays a public host served locally
        "bucket.s3.example": ["127.0.0.1"],  # allow-listed: plays a storage bucket
    }
    allowed = ("public.example", "bucket.s3.example")
    ok, blocked = "ok", "refused"
    return (
        [
            dict(name="127.0.0.1", ref=f"http://127.0.0.1:{p}/img.png", expect=blocked, reason="loopback address"),
            dict(name="127.1.2.3", ref=f"http://127.1.2.3:{p}/img.png", expect=blocked, reason="loopback address"),
            dict(name="10.0.0.1", ref=f"http://10.0.0.1:{p}/img.png", expect=blocked, reason="private address"),
            dict(name="192.168.1.1", ref="http://192.168.1.1/img.png", expect=blocked, reason="private address"),
            dict(name="172.16.0.1", ref="http://172.16.0.1/img.png", expect=blocked, reason="private address"),
            dict(name="169.254.169.254", ref=METADATA, expect=blocked, reason="link-local address"),
            dict(name="[::1]", ref=f"http://[::1]:{p}/img.png", expect=blocked, reason="loopback address"),
            dict(name="[fe80::1]", ref="http://[fe80::1]/img.png", expect=blocked, reason="link-local address"),
            dict(name="[fc00::1]", ref="http://[fc00::1]/img.png", expect=blocked, reason="private address"),
            dict(name="0.0.0.0", ref=f"http://0.0.0.0:{p}/img.png", expect=blocked, reason="unspecified address"),
            dict(name="224.0.0.1", ref="http://224.0.0.1/img.png", expect=blocked, reason="multicast address"),
            dict(
                name="100.64.0.1 (shared)", ref="http://100.64.0.1/img.png", expect=blocked, reason="reserved address"
            ),
            dict(
                name="2130706433 (decimal)",
                ref=f"http://2130706433:{p}/img.png",
                expect=blocked,
                reason="loopback address",
            ),
            dict(name="0x7f.1 (hex)", ref=f"http://0x7f.1:{p}/img.png", expect=blocked, reason="loopback address"),
            dict(
                name="0177.0.0.1 (octal)",
                ref=f"http://0177.0.0.1:{p}/img.png",
                expect=blocked,
                reason="loopback address",
            ),
            dict(
                name="0xA9FEA9FE (hex metadata)", ref="http://0xA9FEA9FE/", expect=blocked, reason="link-local address"
            ),
            dict(
                name="[::ffff:127.0.0.1] (mapped)",
                ref=f"http://[::ffff:127.0.0.1]:{p}/img.png",
                expect=blocked,
                reason="loopback address",
            ),
            dict(
                name="[::ffff:a9fe:a9fe] (mapped)",
                ref="http://[::ffff:a9fe:a9fe]/",
                expect=blocked,
                reason="link-local address",
            ),
            dict(
                name="999.0.0.1 (malformed)",
                ref=f"http://999.0.0.1:{p}/img.png",
                expect=blocked,
                reason="malformed address",
            ),
            dict(
                name="name -> 127.0.0.1",
                ref=f"http://loopback.example:{p}/img.png",
                expect=blocked,
                reason="loopback address",
            ),
            dict(
                name="name -> public + 10.0.0.1",
                ref=f"http://mixed.example:{p}/img.png",
                expect=blocked,
                reason="private address",
            ),
            dict(
                name="public name -302-> metadata",
                ref=f"http://public.example:{p}/to-metadata",
                expect=blocked,
                reason="link-local address",
                hops_allowed={("127.0.0.1", p)},
            ),
            dict(
                name="public name -302-> decimal loopback",
                ref=f"http://public.example:{p}/to-decimal",
                expect=blocked,
                reason="loopback address",
                hops_allowed={("127.0.0.1", p)},
            ),
            dict(
                name="public name -302-> name -> loopback",
                ref=f"http://public.example:{p}/to-loopback-name",
                expect=blocked,
                reason="loopback address",
                hops_allowed={("127.0.0.1", p)},
            ),
            dict(
                name="public name -302-> file://",
                ref=f"http://public.example:{p}/to-file",
                expect=blocked,
                reason="not an http(s) URL",
                hops_allowed={("127.0.0.1", p)},
            ),
            dict(
                name="public name: 6 redirects",
                ref=f"http://public.example:{p}/loop0",
                expect=blocked,
                reason="more than 3 redirects",
                hops_allowed={("127.0.0.1", p)},
            ),
            dict(
                name="public name -302-> Label Studio upload",
                ref=f"http://public.example:{p}/to-ls-upload",
                expect="HTTP 401",  # followed (Label Studio is exempt) but without the key
                reason="answered HTTP 401",
                hops_allowed={("127.0.0.1", p), ("127.0.0.1", ls.port)},
            ),
            dict(
                name="/api/projects/1/export",
                ref="/api/projects/1/export",
                expect=blocked,
                reason="not a Label Studio media path",
            ),
            dict(
                name="/data/upload/../../api/...",
                ref="/data/upload/../../api/projects/1/export",
                expect=blocked,
                reason="not a Label Studio media path",
            ),
            dict(
                name="/data/upload/%2e%2e/...",
                ref="/data/upload/%2e%2e/%2e%2e/api/projects/1/export",
                expect=blocked,
                reason="not a Label Studio media path",
            ),
            dict(
                name="presign -302-> private address",
                ref="/tasks/8/presign/?fileuri=eA%3D%3D",
                expect=blocked,
                reason="private address",
                hops_allowed={("127.0.0.1", ls.port)},
            ),
            dict(
                name="Label Studio upload (PAT)",
                ref="/data/upload/1/a.png",
                expect=ok,
                hops_allowed={("127.0.0.1", ls.port)},
            ),
            dict(
                name="Label Studio presign -302-> allowed bucket",
                ref=presign,
                expect=ok,
                hops_allowed={("127.0.0.1", ls.port), ("127.0.0.1", p)},
            ),
            dict(
                name="allowed host (IMAGE_ALLOWED_HOSTS)",
                ref=f"http://public.example:{p}/img.png",
                expect=ok,
                hops_allowed={("127.0.0.1", p)},
            ),
        ],
        names,
        allowed,
    )


def _fetcher(ls: Server, names: dict, allowed: tuple, **kwargs) -> ImageFetcher:
    return ImageFetcher(
        LIMITS,
        label_studio_url=ls.url,
        auth=LabelStudioAuth(ls.url, ls.state.pat),
        ssrf=SsrfPolicy(allowed_hosts=allowed, trusted_origin=ls.url),
        resolver=resolver_for(names),
        **kwargs,
    )


def test_ssrf_matrix(ls, host_b, network, caplog):
    caplog.set_level(logging.DEBUG)
    cases, names, allowed = _matrix_cases(ls, host_b)
    fetcher = _fetcher(ls, names, allowed)
    failures = []
    for case in cases:
        before = len(network.connects)
        started = time.perf_counter()
        try:
            loaded = fetcher.load(case["ref"])
            outcome = f"ok {loaded.original_width}x{loaded.original_height}"
        except ImageFetchError as error:
            outcome = str(error)
        elapsed_ms = (time.perf_counter() - started) * 1000
        connects = network.connects[before:]
        stray = [c for c in connects if c not in case.get("hops_allowed", set())]
        row = {
            "case": case["name"],
            "outcome": "refused: " + outcome.split("refused: ", 1)[1] if "refused: " in outcome else outcome,
            "connects": len(connects),
            "connects_to_blocked": len(stray),
            "ms": round(elapsed_ms, 1),
        }
        FIGURES["ssrf_matrix"].append(row)
        if case["expect"] == "ok":
            good = outcome == "ok 32x24"
        else:
            good = case["reason"] in outcome and not outcome.startswith("ok")
        # no network detail: no socket error text, no resolved address of a name
        good = good and "Errno" not in outcome and "Connection" not in outcome and FAKE_PUBLIC_ADDRESS not in outcome
        if not good or stray:
            failures.append((case["name"], outcome, stray))
    assert failures == []
    # the presigned URL's signature never reached a log line or a message
    assert "SECRETSIGNATURE" not in caplog.text
    bucket_requests = [r for r in host_b.state.requests if "X-Amz-Signature" in r[1]]
    assert bucket_requests and all(auth is None for _, _, auth in bucket_requests)  # no key to the bucket
    # the key went to Label Studio's media only, never after leaving its origin
    secret_requests = [r for r in ls.state.requests if r[1] == "/data/upload/1/secret.png"]
    assert secret_requests and all(auth is None for _, _, auth in secret_requests)
    assert not any(method == "GET" and path.startswith("/api/") for method, path, _ in ls.state.requests)


def test_resolved_address_is_pinned(ls, host_b, network):
    """The name is resolved once per connection; the connection goes to that address (a rebinding
    resolver's second answer is never asked for)."""
    host_b.state.public["/img.png"] = PNG
    answers = iter([["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]])
    calls = []

    def rebinding(host, port):
        calls.append(host)
        return next(answers)

    fetcher = ImageFetcher(LIMITS, ssrf=SsrfPolicy(allowed_hosts=("rebind.example",)), resolver=rebinding)
    assert fetcher.load(f"http://rebind.example:{host_b.port}/img.png").original_width == 32
    assert calls == ["rebind.example"]
    assert network.connects == [("127.0.0.1", host_b.port)]
    host_request = [r for r in host_b.state.requests if r[1] == "/img.png"]
    assert host_request  # served with Host: rebind.example (the name is kept for the Host header)


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command to make a test certificate")
def test_https_to_the_pinned_address_keeps_the_name_for_sni_and_the_certificate(tmp_path, network, monkeypatch):
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # they would replace the session's CA file
        monkeypatch.delenv(variable, raising=False)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=tls.example", "-addext", "subjectAltName=DNS:tls.example"],
        check=True, capture_output=True,
    )  # fmt: skip
    seen: dict[str, list] = {"sni": [], "host": []}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen["sni"].append(name)

    class TlsHandler(_RedirectingHandler):
        def do_GET(self):
            seen["host"].append(self.headers.get("Host"))
            super().do_GET()

    server = Server()
    server.RequestHandlerClass = TlsHandler
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.state.public["/img.png"] = PNG
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        names = {"tls.example": ["127.0.0.1"], "wrong-name.example": ["127.0.0.1"]}
        policy = SsrfPolicy(allowed_hosts=("tls.example", "wrong-name.example"))
        fetcher = ImageFetcher(LIMITS, ssrf=policy, resolver=resolver_for(names))
        fetcher._session.verify = str(cert)
        assert fetcher.load(f"https://tls.example:{server.port}/img.png").original_width == 32
        assert seen["sni"] == ["tls.example"] and seen["host"] == [f"tls.example:{server.port}"]
        assert network.connects == [("127.0.0.1", server.port)]
        with pytest.raises(ImageFetchError, match="no connection"):  # the certificate names tls.example only
            fetcher.load(f"https://wrong-name.example:{server.port}/img.png")
    finally:
        server.shutdown()
        server.server_close()


def test_peer_is_checked(ls, host_b, network, monkeypatch):
    """A socket that ends up connected elsewhere than the checked address is refused."""
    host_b.state.public["/img.png"] = PNG
    fetcher = ImageFetcher(LIMITS, ssrf=SsrfPolicy(allowed_hosts=("127.0.0.1",)))
    real_getpeername = socket.socket.getpeername
    monkeypatch.setattr(socket.socket, "getpeername", lambda sock: ("127.0.0.2", real_getpeername(sock)[1]))
    with pytest.raises(ImageFetchError, match="refused: the connected peer is not the checked address"):
        fetcher.load(f"{host_b.url}/img.png")


def test_allowed_host_port_and_closed_port_messages(host_b, network):
    host_b.state.public["/img.png"] = PNG
    only_other_port = ImageFetcher(LIMITS, ssrf=SsrfPolicy(allowed_hosts=(f"127.0.0.1:{host_b.port + 1}",)))
    with pytest.raises(ImageFetchError, match="refused: loopback address"):
        only_other_port.load(f"{host_b.url}/img.png")
    assert network.connects == []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    allowed = ImageFetcher(LIMITS, ssrf=SsrfPolicy(allowed_hosts=("127.0.0.1",)))
    with pytest.raises(ImageFetchError) as error:
        allowed.load(f"http://127.0.0.1:{closed}/img.png")
    assert str(error.value) == f"could not fetch http://127.0.0.1:{closed}/img.png: no connection"


def test_a_plain_session_is_never_used_while_protection_is_on():
    plain = requests.Session()
    fetcher = ImageFetcher(LIMITS, session=plain)
    assert fetcher._session is not plain
    assert isinstance(fetcher._session.get_adapter("https://"), SsrfSafeHTTPAdapter)
    guarded = ssrf_safe_session(SsrfGuard(SsrfPolicy()))
    assert ImageFetcher(LIMITS, session=guarded, ssrf=SsrfPolicy())._session is guarded  # the app's shared one
    other_policy = ssrf_safe_session(SsrfGuard(SsrfPolicy(allowed_hosts=("files.lan",))))
    assert ImageFetcher(LIMITS, session=other_policy, ssrf=SsrfPolicy())._session is not other_policy


def test_protection_off_for_closed_networks(host_b, network):
    host_b.state.public["/img.png"] = PNG
    config = ServiceConfig.from_env({"SSRF_PROTECTION_ENABLED": "false"})
    assert config.ssrf_protection_enabled is False
    fetcher = ImageFetcher(LIMITS, ssrf=SsrfPolicy(enabled=False))
    assert fetcher.load(f"{host_b.url}/img.png").original_width == 32
    assert ServiceConfig.from_env({}).ssrf_protection_enabled is True
    parsed = ServiceConfig.from_env({"IMAGE_ALLOWED_HOSTS": " minio.internal:9000, [::1]:8080 ,files.lan "})
    assert parsed.image_allowed_hosts == ("minio.internal:9000", "[::1]:8080", "files.lan")
    with pytest.raises(ValueError, match="IMAGE_ALLOWED_HOSTS"):
        ServiceConfig.from_env({"IMAGE_ALLOWED_HOSTS": "http://minio.internal:9000/"})


# ---- the key stays home ----------------------------------------------------------------------


def test_key_without_label_studio_url_is_a_start_error():
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not"):
        ServiceConfig.from_env({"LABEL_STUDIO_API_KEY": LEGACY_TOKEN})
    with pytest.raises(ValueError, match="LABEL_STUDIO_URL"):
        ServiceConfig(label_studio_api_key=LEGACY_TOKEN)


def _predict(client, *images, project="1.1795304640"):
    body = {
        "tasks": [{"id": i + 1, "data": {"image": image}} for i, image in enumerate(images)],
        "project": project,
        "label_config": CONFIG_XML,
        "params": {"login": None, "password": None, "context": None},
    }
    return client.post("/predict", json=body)


def test_setup_hostname_never_receives_the_operators_key(ls, host_b, tmp_path, network):
    """LABEL_STUDIO_URL = ls (PAT); /setup names host_b (another loopback port, allow-listed so that
    it can be reached at all). host_b sees no Authorization and no token exchange."""
    for server in (ls, host_b):
        server.state.protected["/data/upload/1/a.png"] = PNG
        server.state.public["/data/upload/1/public.png"] = PNG
    config = ServiceConfig(
        model_dir=tmp_path / "model_dir",
        image_timeout_s=5.0,
        label_studio_url=ls.url,
        label_studio_api_key=ls.state.pat,
        image_allowed_hosts=(f"127.0.0.1:{host_b.port}",),
    )
    client = create_app(config, methods=FakeMethods()).test_client()
    setup = client.post(
        "/setup",
        json={"project": "1.1795304640", "schema": CONFIG_XML, "hostname": host_b.url, "access_token": "setup-token"},
    )
    assert setup.status_code == 200
    reply = _predict(
        client,
        "/data/upload/1/a.png",  # relative: LABEL_STUDIO_URL, with the key
        f"{host_b.url}/data/upload/1/public.png",  # the /setup host: fetched, without the key
        f"{host_b.url}/data/upload/1/a.png",  # needs a key there: 401, the task fails alone
        f"{ls.url}/data/upload/1/a.png",  # Label Studio's origin, absolute: with the key
    )
    assert reply.status_code == 200
    results = reply.json["results"]
    assert [bool(r["result"]) for r in results] == [True, True, False, True]
    assert host_b.state.refresh_calls == 0
    assert [auth for _, _, auth in host_b.state.requests] == [None, None]
    ls_auth = [auth for method, path, auth in ls.state.requests if method == "GET"]
    assert len(ls_auth) == 2 and all(a.startswith("Bearer ") and ls.state.pat not in a for a in ls_auth)
    assert ls.state.refresh_calls == 1
    FIGURES["key"].append(
        {
            "case": "LABEL_STUDIO_URL + PAT; /setup hostname on another port",
            "requests_to_setup_host": len(host_b.state.requests),
            "with_authorization": sum(1 for *_, a in host_b.state.requests if a),
            "token_refreshes_at_setup_host": host_b.state.refresh_calls,
            "requests_to_label_studio_with_key": len(ls_auth),
        }
    )


def test_setup_token_goes_only_to_its_own_hostname(host_b, tmp_path, network):
    """No LABEL_STUDIO_URL, no key: Label Studio's /setup token goes to the /setup hostname only (and
    that hostname is not exempt from SSRF checks: here it is allow-listed)."""
    host_b.state.protected["/data/upload/1/a.png"] = PNG
    config = ServiceConfig(model_dir=tmp_path / "model_dir", image_timeout_s=5.0)
    client = create_app(config, methods=FakeMethods()).test_client()
    setup = {"project": "1.1", "schema": CONFIG_XML, "hostname": host_b.url, "access_token": LEGACY_TOKEN}
    client.post("/setup", json=setup)
    refused = _predict(client, "/data/upload/1/a.png", project="1.1").json
    assert refused["results"][0]["result"] == [] and network.connects == []
    allowed = config.replace(image_allowed_hosts=(f"127.0.0.1:{host_b.port}",))
    client = create_app(allowed, methods=FakeMethods()).test_client()
    client.post("/setup", json=setup)
    assert _predict(client, "/data/upload/1/a.png", project="1.1").json["results"][0]["result"]
    assert host_b.state.requests[-1][2] == f"Token {LEGACY_TOKEN}"


def test_auth_gives_headers_only_to_its_origin(ls, network):
    auth = LabelStudioAuth(ls.url, ls.state.pat)
    assert auth.headers_for(f"http://127.0.0.1:{ls.port + 1}/data/upload/1/a.png") == {}
    assert ls.state.refresh_calls == 0  # not even a token exchange for a foreign URL
    assert auth.headers_for(f"{ls.url}/data/upload/1/a.png")["Authorization"].startswith("Bearer ")


def test_token_exchange_never_follows_a_redirect(ls, host_b, network):
    ls.redirects["/api/token/refresh/"] = (f"{host_b.url}/api/token/refresh/", False)

    class PostRedirect(_RedirectingHandler):
        def do_POST(self):
            if self.path in self.server.redirects:
                self.send_response(307)
                self.send_header("Location", self.server.redirects[self.path][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_POST()

    ls.RequestHandlerClass = PostRedirect
    auth = LabelStudioAuth(ls.url, ls.state.pat)
    with pytest.raises(Exception, match="was redirected"):
        auth.headers()
    assert host_b.state.requests == []


# ---- image bombs -----------------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measured(function):
    """``(result or exception, seconds, peak RSS increase in MiB)``, sampling RSS every 2 ms."""
    baseline = _rss_kib()
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        outcome = function()
    except Exception as error:  # noqa: BLE001 - reported
        outcome = error
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_kib())
    return outcome, elapsed, (peak[0] - baseline) / 1024


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def streamed_png(width: int, height: int, bit_depth: int = 8, color_type: int = 0, row=None) -> bytes:
    """A complete PNG (zero pixels unless ``row`` is given), compressed row by row: a real bomb."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row_bytes = width * channels * bit_depth // 8
    line = b"\x00" + (row if row is not None else bytes(row_bytes))
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(line) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _bomb_row(name: str, outcome, seconds: float, mib: float, size: int) -> dict:
    if isinstance(outcome, str):
        text = outcome
    elif isinstance(outcome, Exception):
        text = f"{type(outcome).__name__}: {outcome}".replace("<bytes>: ", "")
    else:
        model = "x".join(map(str, outcome.model_size))
        text = f"ok, original {outcome.original_width}x{outcome.original_height}, model {model}"
    row = {"case": name, "bytes": size, "outcome": text, "seconds": round(seconds, 4), "peak_rss_mib": round(mib, 1)}
    FIGURES["image_bombs"].append(row)
    return row


def test_pixel_bomb_is_refused_from_the_header():
    bomb = streamed_png(10_000, 10_000)
    outcome, seconds, mib = measured(lambda: decode_image(bomb, ImageLimits()))
    _bomb_row("10000x10000 PNG (zeros)", outcome, seconds, mib, len(bomb))
    assert isinstance(outcome, ImageFetchError)
    assert "10000x10000 = 100000000 pixels, more than IMAGE_MAX_PIXELS=40000000" in str(outcome)
    assert seconds < 0.5 and mib < 20
    # the same file under the old default limit (100 Mpx): decoded in full
    outcome, seconds, mib = measured(lambda: decode_image(bomb, ImageLimits(max_pixels=100_000_000)))
    _bomb_row("10000x10000 PNG, old limit IMAGE_MAX_PIXELS=100000000", outcome, seconds, mib, len(bomb))
    assert not isinstance(outcome, Exception)


def test_largest_allowed_image_decodes_within_bounded_memory():
    near = streamed_png(6_000, 6_000, color_type=2)  # 36 Mpx RGB, under the 40 Mpx limit
    outcome, seconds, mib = measured(lambda: decode_image(near, ImageLimits()))
    _bomb_row("6000x6000 RGB PNG (36 Mpx, allowed)", outcome, seconds, mib, len(near))
    assert not isinstance(outcome, Exception)
    assert (outcome.original_width, outcome.original_height) == (6000, 6000)
    assert outcome.model_size[0] * outcome.model_size[1] <= 1024 * 1024


@pytest.mark.parametrize("concurrency", [2, 4])
def test_decode_semaphore_bounds_peak_memory(concurrency, monkeypatch):
    """Four requests decode a 36 Mpx image at once; only ``concurrency`` of them decode at a time."""
    import backend.service.images as images

    near = streamed_png(6_000, 6_000, color_type=2)
    limits = ImageLimits(decode_concurrency=concurrency)
    inside, most = [0], [0]
    lock = threading.Lock()
    real_slots = images.decode_slots

    class Counting:
        def __init__(self, slots):
            self.slots = slots

        def __enter__(self):
            self.slots.acquire()
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])

        def __exit__(self, *exc):
            with lock:
                inside[0] -= 1
            self.slots.release()

    monkeypatch.setattr(images, "decode_slots", lambda n: Counting(real_slots(n)))

    def four():
        threads = [threading.Thread(target=decode_image, args=(near, limits)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    outcome, seconds, mib = measured(four)
    assert outcome is None
    text = f"ok, at most {most[0]} decoding at once"
    _bomb_row(f"4 parallel 36 Mpx decodes, IMAGE_DECODE_CONCURRENCY={concurrency}", text, seconds, mib, len(near))
    assert most[0] <= concurrency


def test_sixteen_bit_images_keep_their_values():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    grey16 = _encode(Image.fromarray(ramp), "PNG")
    outcome, seconds, mib = measured(lambda: decode_image(grey16, ImageLimits()))
    _bomb_row("16-bit greyscale PNG 64x64", outcome, seconds, mib, len(grey16))
    assert outcome.pixels.shape == (64, 64, 3)
    np.testing.assert_array_equal(outcome.pixels[..., 0], (ramp >> 8).astype(np.uint8))  # not clipped to white
    rgb48_row = b"".join(struct.pack(">HHH", 0x1234, 0x8000, 0xFFFF) for _ in range(40))
    rgb48 = streamed_png(40, 30, bit_depth=16, color_type=2, row=rgb48_row)
    outcome, seconds, mib = measured(lambda: decode_image(rgb48, ImageLimits()))
    _bomb_row("16-bit RGB PNG 40x30", outcome, seconds, mib, len(rgb48))
    assert (outcome.original_width, outcome.original_height) == (40, 30)
    assert outcome.pixels[0, 0].tolist() == [0x12, 0x80, 0xFF]


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (120, 80), (0, 255, 255, 0))  # red in CMYK
    data = _encode(cmyk, "JPEG", quality=95)
    outcome, seconds, mib = measured(lambda: decode_image(data, ImageLimits()))
    _bomb_row("CMYK JPEG 120x80", outcome, seconds, mib, len(data))
    assert (outcome.original_width, outcome.original_height) == (120, 80)
    red, green, blue = outcome.pixels[40, 60].tolist()
    assert red > 200 and green < 60 and blue < 60


def test_many_frame_gif_decodes_the_first_frame_only():
    frames = [Image.new("P", (64, 64), index % 200) for index in range(2000)]
    frames[0] = Image.new("RGB", (64, 64), (255, 0, 0)).convert("P")
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10, optimize=False)
    outcome, seconds, mib = measured(lambda: decode_image(data, ImageLimits()))
    _bomb_row("GIF, 2000 frames 64x64", outcome, seconds, mib, len(data))
    assert (outcome.original_width, outcome.original_height) == (64, 64)
    assert outcome.pixels[0, 0].tolist() == [255, 0, 0]
    assert seconds < 0.5


def test_truncated_and_unsupported_files_fail_clearly():
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    files = {
        "PNG": _encode(picture, "PNG"),
        "JPEG": _encode(picture, "JPEG", quality=90),
        "WEBP": _encode(picture, "WEBP", quality=90),
        "GIF": _encode(picture, "GIF"),
        "TIFF": _encode(picture, "TIFF", compression="tiff_deflate"),
        "BMP": _encode(picture, "BMP"),
    }
    for fmt, data in files.items():
        whole = decode_image(data, ImageLimits())
        assert (whole.original_width, whole.original_height) == (300, 200), fmt
        truncated = data[: len(data) * 6 // 10]
        outcome, seconds, mib = measured(lambda: decode_image(truncated, ImageLimits()))
        _bomb_row(f"{fmt} truncated to 60%", outcome, seconds, mib, len(truncated))
        assert isinstance(outcome, ImageFetchError), (fmt, outcome)
        assert "corrupt or truncated" in str(outcome) or "not a readable image" in str(outcome)
    for fmt in ("ICO", "PPM", "PCX", "TGA"):
        data = _encode(picture.resize((32, 32)), fmt)
        outcome, seconds, mib = measured(lambda: decode_image(data, ImageLimits()))
        _bomb_row(f"{fmt} (not an accepted format)", outcome, seconds, mib, len(data))
        assert isinstance(outcome, ImageFetchError) and "not a readable image" in str(outcome)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(ImageFetchError, match="not a readable image"):
        decode_image(eps, ImageLimits())  # never handed to Ghostscript


# orientation -> how the stored (W x H) pixels must be turned to show upright (numpy)
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.transpose(a, (1, 0, 2)),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: np.transpose(a[::-1, ::-1], (1, 0, 2)),
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_give_the_original_size_label_studio_shows(orientation):
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high; a distinct colour per quadrant
    stored[:10, :20] = (255, 0, 0)
    stored[:10, 20:] = (0, 255, 0)
    stored[10:, :20] = (0, 0, 255)
    stored[10:, 20:] = (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    expected = UPRIGHT[orientation](stored)
    png = decode_image(png_bytes(stored, exif=exif.tobytes()), ImageLimits())
    assert (png.original_width, png.original_height) == (expected.shape[1], expected.shape[0])
    np.testing.assert_array_equal(png.pixels, expected)
    jpeg = decode_image(_encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes()), ImageLimits())
    assert (jpeg.original_width, jpeg.original_height) == (expected.shape[1], expected.shape[0])
    assert np.abs(jpeg.pixels.astype(int) - expected.astype(int)).mean() < 12
    FIGURES["image_bombs"].append(
        {
            "case": f"EXIF orientation {orientation} (40x20 stored)",
            "outcome": f"ok, original {png.original_width}x{png.original_height}",
        }
    )


def test_bombs_through_predict_are_task_errors_not_500(tmp_path, network):
    bombs = {
        "pixels": streamed_png(10_000, 10_000),
        "truncated": png_bytes(sample_image(64, 64))[:-40],
        "garbage": b"\x89PNG\r\n\x1a\n" + b"x" * 100,
        "ico": _encode(Image.new("RGB", (16, 16)), "ICO"),
    }
    uris = [f"data:image/png;base64,{base64.b64encode(data).decode()}" for data in bombs.values()]
    config = ServiceConfig(model_dir=tmp_path / "model_dir")
    client = create_app(config, methods=FakeMethods()).test_client()
    reply = _predict(client, *uris, "data:image/png;base64," + base64.b64encode(png_bytes(sample_image())).decode())
    assert reply.status_code == 200
    results = reply.json["results"]
    assert [bool(r["result"]) for r in results] == [False, False, False, False, True]
    FIGURES["image_bombs"].append(
        {
            "case": "POST /predict: 10000x10000, truncated, garbage, ICO, one good image",
            "outcome": f"HTTP {reply.status_code}, {sum(1 for r in results if r['result'])} of 5 tasks with regions",
        }
    )


# ---- the report ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    if not any(FIGURES.values()):
        return
    document = {
        "benchmark": "image fetching: SSRF matrix, key confinement, image bombs (tests/reliability/test_ssrf.py)",
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
        **FIGURES,
    }
    if FIGURES["ssrf_matrix"]:
        document["connects_to_blocked_ranges"] = sum(row["connects_to_blocked"] for row in FIGURES["ssrf_matrix"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        return
    lines = [""]
    if FIGURES["ssrf_matrix"]:
        lines.append(f"{'SSRF case':42} {'connects':>8} {'blocked':>7}  outcome")
        for row in FIGURES["ssrf_matrix"]:
            lines.append(
                f"{row['case'][:42]:42} {row['connects']:>8} {row['connects_to_blocked']:>7}  {row['outcome'][:60]}"
            )
    if FIGURES["image_bombs"]:
        lines.append(f"{'image':52} {'s':>6} {'MiB':>6}  outcome")
        for row in FIGURES["image_bombs"]:
            lines.append(
                f"{row['case'][:52]:52} {row.get('seconds', ''):>6} {row.get('peak_rss_mib', ''):>6}  "
                f"{row['outcome'][:70]}"
            )
    lines.append(f"figures written to {RESULTS}")
    with capture.global_and_fixture_disabled():
        for line in lines:
            reporter.write_line(line)
