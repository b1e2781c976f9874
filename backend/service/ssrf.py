"""SSRF protection for image downloads: which addresses a task's URL may make this service reach.

A task's image URL is chosen by whoever can create tasks. Without a guard it can make this
service fetch ``http://169.254.169.254/...`` (cloud metadata), ``http://127.0.0.1:6379/`` or any
host on the private network, and report back whether it answered. The guard, on by default
(``SSRF_PROTECTION_ENABLED``, Label Studio's name for the same switch), works at the socket:

* the host is resolved **once** (through an injectable resolver; IP literals in any spelling,
  ``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``[::ffff:127.0.0.1]``, are parsed, never resolved);
* every resolved address must be public: loopback, private, link-local, multicast, unspecified and
  reserved addresses (:func:`blocked_reason`, built on :mod:`ipaddress`) are refused, also when
  wrapped in IPv6 (IPv4-mapped, NAT64, 6to4, Teredo) - before any socket connects;
* the connection goes to the address that was checked (no second lookup, so DNS rebinding cannot
  swap it), while the ``Host`` header, TLS SNI and certificate check keep the name;
* the connected peer is checked again.

Exempt: Label Studio's own origin (``LABEL_STUDIO_URL``: scheme, host and port) and the hosts in
``IMAGE_ALLOWED_HOSTS`` (``host`` or ``host:port``). Redirects are not followed by ``requests``:
:class:`~backend.service.images.ImageFetcher` follows each hop itself, and every hop opens its
connection through the same guard.

Error messages say only ``refused: <kind of address>``: no resolved address, no socket error
(which would turn the service into a port scanner's oracle).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the host's addresses as strings, in the order to try them.
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_PORTS = {"http": 80, "https": 443}
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# One part of a BSD inet_aton() IPv4 spelling: hex, octal or decimal.
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")
# Hosts made only of what IP spellings are made of: never sent to a resolver when they do not parse.
_NUMERIC_LOOKING = re.compile(r"[0-9.]+|0[xX][0-9a-fA-F.xX]*")


class SsrfBlockedUrlError(ValueError):
    """The URL's host is, or resolves to, an address this service must not connect to."""


def parse_ipv4_literal(text: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any spelling ``inet_aton`` accepts (``127.1``, ``2130706433``,
    ``0x7f000001``, ``0177.0.0.1``), or ``None`` if ``text`` is not one."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(part) for part in parts):
        return None
    values = []
    for part in parts:
        if part[:2].lower() == "0x":
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part[0] == "0":
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(value > 255 for value in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for value in head:
        number = number * 256 + value
    number = number * 256 ** (4 - len(head)) + last
    return ipaddress.IPv4Address(number)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells (brackets, a trailing dot and IPv6 zones allowed), else ``None``.

    Raises :class:`SsrfBlockedUrlError` for hosts that look numeric but are no valid address
    (``999.1.1.1``): a resolver might still read them as one.
    """
    text = host.strip().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise SsrfBlockedUrlError("refused: malformed address") from None
    address = parse_ipv4_literal(text)
    if address is None and _NUMERIC_LOOKING.fullmatch(text):
        raise SsrfBlockedUrlError("refused: malformed address")
    return address


def blocked_reason(address: IPAddress | str) -> str | None:
    """Why ``address`` must not be reached (``"loopback address"``, ...), or ``None`` if it is public."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(address.packed)  # drop any zone id
        embedded: list[ipaddress.IPv4Address] = []
        if address.ipv4_mapped is not None:
            return blocked_reason(address.ipv4_mapped)
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None:
            embedded.append(address.sixtofour)
        if address.teredo is not None:
            embedded.extend(address.teredo)
        for inner in embedded:
            reason = blocked_reason(inner)
            if reason is not None:
                return reason
    if address.is_unspecified:
        return "unspecified address"
    if address.is_loopback:
        return "loopback address"
    if address.is_link_local:
        return "link-local address"
    if address.is_multicast:
        return "multicast address"
    if any(address in network for network in _PRIVATE_NETWORKS if network.version == address.version):
        return "private address"
    if address.is_private or address.is_reserved or not address.is_global:
        return "reserved address"
    return None


def canonical_host(host: str) -> str:
    """``host`` for comparisons: lower case, no brackets or trailing dot, IP literals normalised."""
    text = host.strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = parse_ip_literal(text)
    except SsrfBlockedUrlError:
        return text
    return str(address) if address is not None else text


def origin_of(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) URL, default ports filled in; ``None`` otherwise."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, canonical_host(parts.hostname), port or DEFAULT_PORTS[scheme]


def parse_allowed_hosts(entries: Iterable[str] | str | None) -> tuple[tuple[str, int | None], ...]:
    """``IMAGE_ALLOWED_HOSTS`` entries -> ``((host, port or None), ...)``.

    Accepts a comma-separated string or a list; each entry is ``host``, ``host:port``,
    ``[v6]``, ``[v6]:port`` or a bare IPv6 address. Raises ``ValueError`` naming the variable.
    """
    if entries is None:
        return ()
    if isinstance(entries, str):
        entries = entries.split(",")
    parsed: list[tuple[str, int | None]] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        if "/" in entry or "@" in entry or any(c.isspace() for c in entry):
            raise ValueError(f"IMAGE_ALLOWED_HOSTS entries are host or host:port (no scheme or path), got {entry!r}")
        host, port_text, port = entry, None, None
        if entry.startswith("["):
            host, bracket, rest = entry[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"IMAGE_ALLOWED_HOSTS: malformed entry {entry!r}")
            port_text = rest[1:] if rest else None
        elif entry.count(":") == 1:
            host, port_text = entry.split(":")
        # else: a name, or a bare IPv6 address (several colons, no port)
        if port_text is not None:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"IMAGE_ALLOWED_HOSTS: bad port in {entry!r}")
            port = int(port_text)
        if not host.strip("[]"):
            raise ValueError(f"IMAGE_ALLOWED_HOSTS: empty host in {entry!r}")
        parsed.append((canonical_host(host), port))
    return tuple(parsed)


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (``getaddrinfo``), duplicates removed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise SsrfBlockedUrlError("refused: the host name does not resolve") from error
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        if sockaddr[0] not in addresses:
            addresses.append(sockaddr[0])
    return addresses


@dataclass(frozen=True)
class SsrfPolicy:
    """Where downloads may connect (picklable; :class:`SsrfGuard` applies it).

    ``trusted_origin``: Label Studio's URL (``LABEL_STUDIO_URL``), exempt by origin.
    ``allowed_hosts``: ``IMAGE_ALLOWED_HOSTS`` entries, exempt by host (and port if given).
    """

    enabled: bool = True
    allowed_hosts: tuple[str, ...] = ()
    trusted_origin: str | None = None

    def __post_init__(self) -> None:
        parse_allowed_hosts(self.allowed_hosts)  # fail early on bad entries


class SsrfGuard:
    """Resolves, checks and connects (see the module docstring); used by :class:`SsrfSafeHTTPAdapter`."""

    def __init__(self, policy: SsrfPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self.resolver = resolver or system_resolver
        self._trusted = origin_of(policy.trusted_origin) if policy.trusted_origin else None
        self._allowed = parse_allowed_hosts(policy.allowed_hosts)

    def is_exempt(self, scheme: str, host: str, port: int) -> bool:
        """Whether ``scheme://host:port`` is Label Studio's origin or an allowed host."""
        host = canonical_host(host)
        if self._trusted is not None and (scheme, host, port) == self._trusted:
            return True
        return any(host == allowed and allowed_port in (None, port) for allowed, allowed_port in self._allowed)

    def is_url_exempt(self, url: str) -> bool:
        origin = origin_of(url)
        return origin is not None and self.is_exempt(*origin)

    def addresses(self, scheme: str, host: str, port: int) -> list[IPAddress]:
        """The addresses to connect to, each checked (unless exempt); raises :class:`SsrfBlockedUrlError`."""
        literal = parse_ip_literal(host)
        if literal is not None:
            candidates: list[IPAddress] = [literal]
        else:
            try:
                resolved = self.resolver(host.rstrip("."), port)
            except SsrfBlockedUrlError:
                raise
            except Exception as error:  # an injected resolver's own failure
                raise SsrfBlockedUrlError("refused: the host name does not resolve") from error
            candidates = []
            for text in resolved:
                try:
                    candidates.append(ipaddress.ip_address(str(text)))
                except ValueError:
                    raise SsrfBlockedUrlError("refused: the host name resolves to a malformed address") from None
            if not candidates:
                raise SsrfBlockedUrlError("refused: the host name does not resolve")
        if not self.is_exempt(scheme, host, port):
            for address in candidates:  # every record must be public: any one might be used
                reason = blocked_reason(address)
                if reason is not None:
                    raise SsrfBlockedUrlError(f"refused: {reason}")
        return candidates

    def connect(
        self,
        scheme: str,
        host: str,
        port: int,
        timeout: Any,
        source_address: tuple[str, int] | None = None,
        socket_options: Sequence[tuple[int, int, int]] | None = None,
    ) -> socket.socket:
        """A socket connected to a checked address of ``host`` (the peer checked too)."""
        exempt = self.is_exempt(scheme, host, port)
        last_error: OSError | None = None
        for address in self.addresses(scheme, host, port):
            try:
                sock = _connect_numeric(address, port, timeout, source_address, socket_options)
            except OSError as error:
                last_error = error
                continue
            try:
                peer = ipaddress.ip_address(sock.getpeername()[0].split("%", 1)[0])
            except OSError as error:
                sock.close()
                last_error = error
                continue
            if _strip_zone(peer) != _strip_zone(address) or (not exempt and blocked_reason(peer) is not None):
                sock.close()
                raise SsrfBlockedUrlError("refused: the connected peer is not the checked address")
            return sock
        assert last_error is not None
        raise last_error


def _strip_zone(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = ipaddress.IPv6Address(address.packed)
        return mapped.ipv4_mapped or mapped
    return address


def _connect_numeric(
    address: IPAddress,
    port: int,
    timeout: Any,
    source_address: tuple[str, int] | None,
    socket_options: Sequence[tuple[int, int, int]] | None,
) -> socket.socket:
    """Connect to a numeric address (``AI_NUMERICHOST``: never a DNS query)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    infos = socket.getaddrinfo(str(address), port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    af, socktype, proto, _name, sockaddr = infos[0]
    sock = socket.socket(af, socktype, proto)
    try:
        for option in socket_options or ():
            sock.setsockopt(*option)
        if timeout is None or isinstance(timeout, (int, float)):
            sock.settimeout(timeout)
        if source_address:
            sock.bind(source_address)
        sock.connect(sockaddr)
        return sock
    except BaseException:
        sock.close()
        raise


class _GuardedConnectionMixin:
    """Replaces urllib3's ``_new_conn`` (which resolves the name itself) with the guard's."""

    ssrf_guard: SsrfGuard
    ssrf_scheme: str = "http"

    def _new_conn(self) -> socket.socket:
        try:
            return self.ssrf_guard.connect(
                self.ssrf_scheme,
                self._dns_host,  # type: ignore[attr-defined]
                self.port,  # type: ignore[attr-defined]
                self.timeout,  # type: ignore[attr-defined]
                source_address=self.source_address,  # type: ignore[attr-defined]
                socket_options=self.socket_options,  # type: ignore[attr-defined]
            )
        except socket.timeout as error:
            raise ConnectTimeoutError(self, "connection timed out") from error
        except OSError as error:
            raise NewConnectionError(self, "connection failed") from error  # type: ignore[arg-type]


class SsrfSafeHTTPAdapter(HTTPAdapter):
    """A ``requests`` adapter whose every connection goes through an :class:`SsrfGuard`.

    Proxies are never used (a proxy would resolve names itself, out of the guard's sight).
    """

    def __init__(self, guard: SsrfGuard, **kwargs: Any) -> None:
        self.guard = guard
        connection = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), {"ssrf_guard": guard})
        tls_connection = type(
            "GuardedHTTPSConnection",
            (_GuardedConnectionMixin, HTTPSConnection),
            {"ssrf_guard": guard, "ssrf_scheme": "https"},
        )
        self._pool_classes = {
            "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": connection}),
            "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": tls_connection}),
        }
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self._pool_classes)

    def send(self, request: Any, stream: bool = False, timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> Any:  # fmt: skip
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=None)


def ssrf_safe_session(guard: SsrfGuard) -> requests.Session:
    """A ``requests.Session`` with :class:`SsrfSafeHTTPAdapter` mounted for http and https."""
    session = requests.Session()
    adapter = SsrfSafeHTTPAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
