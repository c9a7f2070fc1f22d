"""The egress rules: which client may reach what. Pure code, no I/O: the policy is built
by :mod:`.loading` (or in code), the rate and byte budgets are :mod:`.limiter`'s.

Theory of operation:

* Deny by default. A request is allowed only if its client has an entry, the entry is
  within its validity window, the scheme, port and method are permitted, no deny pattern
  (global or the client's) matches the host, and an allow pattern (the client's or global)
  does. Deny wins over allow. :meth:`Policy.decide` returns a :class:`Decision` that names
  the rule that decided, for logs, audit records and 403 bodies.
* Host patterns are an exact name or ``*.`` followed by a name (any depth of subdomain,
  never the bare name). Every host is normalised once, by
  :func:`wonders.policy.addresses.parse_host`: UTS-46 mapped (Unicode dots, fullwidth
  digits, case), then an IP literal in any spelling, or a name compared in IDNA
  (punycode) ASCII without its trailing dot. Literals match only address entries (an IP
  or a CIDR); an IPv4 entry also matches the IPv4-mapped and NAT64 forms of its
  addresses. :func:`parse_target` gives the URL with that normalised host: the forwarder
  fetches that URL, so the host decided on is the host connected to.
* The address guard (:meth:`Policy.guard`) runs on the addresses a host resolves to and
  returns the one to connect to: public addresses pass, non-public ones only inside the
  client's ``allow_private`` ranges. Report mode never relaxes the guard.
* ``report`` mode allows what ``enforce`` would deny and says so (action ``report``), to
  roll out a new allowlist. Unknown clients and malformed URLs are denied in either mode.
* ``max_url_length`` and ``max_header_bytes`` cap a request's URL and headers (the
  forwarder answers 414 and 431, in either mode); ``max_request_bytes`` caps its body.
* A :class:`Policy` is immutable, so a reload can swap it in whole.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Network, IPv6Network, ip_network
from types import MappingProxyType
from typing import Final, Literal
from urllib.parse import urlsplit

from wonders.crypto import PublicBundle
from wonders.policy.addresses import (
    Host,
    IPAddress,
    classify,
    ipv4_of,
    normalize_name,
    parse_host,
    parse_ip_literal,
)

__all__ = [
    "DEFAULT_METHODS",
    "SCHEMES",
    "AddressEntry",
    "AnyHost",
    "ClientPolicy",
    "Decision",
    "Entry",
    "Guarded",
    "HostPattern",
    "Network",
    "Policy",
    "Target",
    "normalize_host",
    "parse_entry",
    "parse_network",
    "parse_target",
]

Action = Literal["allow", "deny", "report"]
Network = IPv4Network | IPv6Network

DEFAULT_METHODS: Final = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
_DEFAULT_PORTS: Final = (80, 443)
#: The schemes a policy can allow (and allows by default).
SCHEMES: Final = ("http", "https")
_DEFAULT_PORT_OF: Final = {"http": 80, "https": 443}
_MIB = 1024 * 1024


# ---------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a policy check.

    Attributes:
        action: ``allow``, ``deny``, or ``report`` (allowed, but enforce mode would deny).
        rule: the rule that decided, e.g. ``client gpu01: allow[2] "*.hf.co"``.
        reason: one short sentence for a 403/429 body or a log line.
        status: the HTTP status a denial is answered with (403, or 429 for limits).
        retry_after: seconds to wait, for a 429.
    """

    action: Action
    rule: str
    reason: str
    status: int = 200
    retry_after: float | None = None

    @property
    def allowed(self) -> bool:
        return self.action != "deny"

    def __str__(self) -> str:
        return f"{self.action} by {self.rule}: {self.reason}"


def _allow(rule: str, reason: str) -> Decision:
    return Decision("allow", rule, reason)


def _deny(rule: str, reason: str, status: int = 403, retry: float | None = None) -> Decision:
    return Decision("deny", rule, reason, status, retry)


# ------------------------------------------------------------------------------ patterns


def normalize_host(host: str) -> str:
    """A host name's canonical form: UTS-46 mapped, IDNA (punycode) ASCII, lowercase,
    without one trailing dot (:func:`wonders.policy.addresses.normalize_name`).

    Raises ValueError for a host that is not a valid name, or that is an IP address.
    """
    return normalize_name(host)


@dataclass(frozen=True, slots=True)
class HostPattern:
    """``example.com`` (that name only) or ``*.example.com`` (any subdomain, any depth)."""

    text: str
    name: str
    wildcard: bool

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        wildcard = text.startswith("*.")
        rest = text[2:] if wildcard else text
        if "*" in rest:
            raise ValueError(f"{text!r}: '*' is only allowed as a leading '*.'")
        if wildcard and parse_ip_literal(rest) is not None:
            raise ValueError(f"{text!r}: an address cannot take a wildcard")
        return cls(text, normalize_host(rest), wildcard)

    def matches(self, host: str) -> bool:
        """``host`` must already be normalised."""
        if self.wildcard:
            return host.endswith("." + self.name)
        return host == self.name


@dataclass(frozen=True, slots=True)
class AddressEntry:
    """An IP address or CIDR in an allow or deny list; matches IP-literal hosts and, in
    deny lists, resolved addresses."""

    text: str
    network: Network

    def matches(self, address: IPAddress) -> bool:
        return _in_network(address, self.network)


def _in_network(address: IPAddress, network: Network) -> bool:
    """Whether ``address`` is in ``network``; an IPv4 network also holds the IPv4-mapped
    and NAT64 addresses that carry one of its addresses."""
    if address.version == network.version and address in network:
        return True
    if isinstance(network, IPv4Network):
        embedded = ipv4_of(address)
        return embedded is not None and embedded in network
    return False


@dataclass(frozen=True, slots=True)
class AnyHost:
    """Every host name. Only for policies built in code (``wonder-run --local``): a policy
    file cannot say it, since a bare ``*`` there is far more often a mistake."""

    text: str = "*"

    def matches(self, host: str) -> bool:
        return True


Entry = HostPattern | AddressEntry | AnyHost


def parse_entry(text: str) -> Entry:
    """Parse an allow/deny list item: a host pattern, an IP address or a CIDR.

    Raises ValueError, its message starting with ``text`` quoted.
    """
    try:
        if text.startswith("*."):
            return HostPattern.parse(text)
        if "/" in text:
            return AddressEntry(text, parse_network(text))
        address = parse_ip_literal(text)
        if address is not None:
            return AddressEntry(text, ip_network(address))
        return HostPattern.parse(text)
    except ValueError as exc:
        message = str(exc)
        if not message.startswith(repr(text)):
            message = f"{text!r}: {message}"
        raise ValueError(message) from None


def parse_network(text: str) -> Network:
    """An IP address (as a one-address network) or a CIDR with no host bits set; raises
    ValueError."""
    if "/" not in text:
        address = parse_ip_literal(text)
        if address is None:
            raise ValueError("not an IP address or CIDR")
        return ip_network(address)
    try:
        return ip_network(text.strip("[]"), strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid CIDR: {exc}") from None


def _find(entries: Sequence[Entry], host: str, address: IPAddress | None) -> int | None:
    for i, entry in enumerate(entries):
        if address is not None:
            if isinstance(entry, AddressEntry) and entry.matches(address):
                return i
        elif isinstance(entry, HostPattern | AnyHost) and entry.matches(host):
            return i
    return None


# ------------------------------------------------------------------------------ policy


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """One client's entry; ``None`` limits mean unlimited. Times are Unix seconds."""

    name: str
    bundle: PublicBundle
    allow: tuple[Entry, ...] = ()
    deny: tuple[Entry, ...] = ()
    methods: tuple[str, ...] = DEFAULT_METHODS
    ports: tuple[int, ...] | None = _DEFAULT_PORTS  # None: any port (policies built in code)
    schemes: tuple[str, ...] = SCHEMES
    max_request_bytes: int | None = 16 * _MIB
    max_response_bytes: int | None = None
    max_header_bytes: int | None = 64 * 1024
    max_url_length: int | None = 8192
    rate_per_minute: int | None = 600
    max_concurrent: int | None = 16
    egress_bytes_per_day: int | None = 1024 * _MIB
    not_before: float | None = None
    not_after: float | None = None
    mode: Literal["enforce", "report"] = "enforce"
    allow_private: tuple[Network, ...] = ()
    follow_redirects: bool = False


@dataclass(frozen=True, slots=True)
class Guarded:
    """The address guard's answer: the address to connect to (None if every one is denied)."""

    address: IPAddress | None
    decision: Decision


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Policy:
    """An immutable, loaded policy. ``digest`` identifies the file it came from."""

    clients: Mapping[str, ClientPolicy]
    allow: tuple[Entry, ...] = ()
    deny: tuple[Entry, ...] = ()
    source: str = "<policy>"
    digest: str = ""
    _by_kid: Mapping[str, ClientPolicy] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clients", MappingProxyType(dict(self.clients)))
        by_kid = {c.bundle.kid: c for c in self.clients.values()}
        object.__setattr__(self, "_by_kid", MappingProxyType(by_kid))

    def client_by_kid(self, kid: str) -> ClientPolicy | None:
        return self._by_kid.get(kid)

    def sender(self, kid: str) -> PublicBundle | None:
        """The registered bundle with this key id (``senders`` for
        :func:`wonders.crypto.open_request`)."""
        entry = self._by_kid.get(kid)
        return entry.bundle if entry else None

    def window(self, client: str, *, now: float) -> Decision:
        """Whether ``client`` may make requests at all at ``now``: its entry, and its
        ``not_before``/``not_after`` window (as :meth:`decide` applies them). For what the
        forwarder answers itself (``wonders ping``)."""
        entry = self.clients.get(client)
        if entry is None:
            return _deny("no client entry", f"client {client!r} is not in the policy")
        who = f"client {client}"
        rule = reason = ""
        if entry.not_before is not None and now < entry.not_before:
            rule = f"{who}: not_before {_when(entry.not_before)}"
            reason = f"{client} may not make requests before {_when(entry.not_before)}"
        elif entry.not_after is not None and now > entry.not_after:
            rule = f"{who}: not_after {_when(entry.not_after)}"
            reason = f"{client}'s access ended at {_when(entry.not_after)}"
        if not rule:
            return Decision("allow", f"{who}: within its window", "")
        if entry.mode == "report":
            return Decision("report", rule, f"would deny: {reason}")
        return _deny(rule, reason)

    def decide(
        self, client: str, method: str, url: str, *, now: float,
        request_bytes: int | None = None,
    ) -> Decision:
        """Decide a request before any DNS lookup (see the module docstring)."""
        entry = self.clients.get(client)
        if entry is None:
            return _deny("no client entry", f"client {client!r} is not in the policy")
        who = f"client {client}"
        try:
            split = _split_url(url)
        except ValueError as exc:
            return _deny(f"{who}: malformed URL", str(exc))
        try:
            host = parse_host(split.host)
        except ValueError as exc:
            return _deny(f"{who}: malformed host", str(exc))
        scheme, port, address, name = split.scheme, split.port, host.address, host.name
        shown = str(address) if address is not None else name

        def violation(rule: str, reason: str) -> Decision:
            if entry.mode == "report":
                return Decision("report", rule, f"would deny: {reason}")
            return _deny(rule, reason)

        if entry.not_before is not None and now < entry.not_before:
            return violation(f"{who}: not_before {_when(entry.not_before)}",
                             f"{client} may not make requests before {_when(entry.not_before)}")
        if entry.not_after is not None and now > entry.not_after:
            return violation(f"{who}: not_after {_when(entry.not_after)}",
                             f"{client}'s access ended at {_when(entry.not_after)}")
        if scheme not in entry.schemes:
            return violation(f"{who}: schemes {list(entry.schemes)}",
                             f"scheme {scheme!r} is not allowed for {client}")
        if entry.ports is not None and port not in entry.ports:
            return violation(f"{who}: ports {list(entry.ports)}",
                             f"port {port} is not allowed for {client}")
        if method not in entry.methods:
            return violation(f"{who}: methods {list(entry.methods)}",
                             f"method {method} is not allowed for {client}")
        limit = entry.max_request_bytes
        if request_bytes is not None and limit is not None and request_bytes > limit:
            return violation(f"{who}: max_request_bytes {limit}",
                             f"request body of {request_bytes} bytes is over {limit}")
        if address is not None:
            checked = self._check_address(entry, address)
            if isinstance(checked, Decision):
                return checked  # the address guard is never relaxed by report mode
        for scope, entries in (("global", self.deny), (who, entry.deny)):
            i = _find(entries, name, address)
            if i is not None:
                return violation(f'{scope}: deny[{i}] "{entries[i].text}"',
                                 f"{shown} is denied by policy")
        for scope, entries in ((who, entry.allow), ("global", self.allow)):
            i = _find(entries, name, address)
            if i is not None:
                return _allow(f'{scope}: allow[{i}] "{entries[i].text}"', f"{shown} is allowed")
        return violation(f"{who}: default deny", f"no allow rule matches {shown}")

    def _check_address(self, entry: ClientPolicy, address: IPAddress) -> Decision | str:
        """The rule that lets ``address`` be connected to, or the denial."""
        cls = classify(address)
        for scope, entries in (("global", self.deny), (f"client {entry.name}", entry.deny)):
            i = _find(entries, "", address)
            if i is not None:
                return _deny(f'{scope}: deny[{i}] "{entries[i].text}"',
                             f"{address} is denied by policy")
        if cls.public:
            return "address guard: public"
        for i, network in enumerate(entry.allow_private):
            if _in_network(address, network):
                return f'client {entry.name}: allow_private[{i}] "{network}"'
        return _deny(f"address guard: {cls.category}",
                     f"{cls.describe()}, a non-public address")

    def guard(self, client: str, host: str, addresses: Sequence[IPAddress]) -> Guarded:
        """Pick the address to connect to among those ``host`` resolved to.

        The first address that passes wins; the caller must connect to exactly that
        address (no second lookup). If none passes, the answer names the first denial.
        """
        entry = self.clients.get(client)
        if entry is None:
            denial = _deny("no client entry", f"client {client!r} is not in the policy")
            return Guarded(None, denial)
        if not addresses:
            return Guarded(None, _deny("address guard: no address", f"{host} did not resolve"))
        first: Decision | None = None
        for address in addresses:
            checked = self._check_address(entry, address)
            if isinstance(checked, str):
                return Guarded(address, _allow(checked, f"{host} -> {address}"))
            first = first or checked
        assert first is not None
        return Guarded(None, _deny(first.rule, f"{host} resolves to {first.reason}"))


@dataclass(frozen=True, slots=True)
class _Split:
    scheme: str
    userinfo: str  # with its "@", or ""
    host: str  # as written: brackets kept, case kept
    port: int
    rest: str  # path, query and fragment, as written


def _split_url(url: str) -> _Split:
    """The parts of an absolute http(s) URL; raises ValueError for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORT_OF:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    start = len(parts.scheme) + 3
    if (url[: len(parts.scheme)].lower() != scheme or url[len(parts.scheme):start] != "://"
            or not url.startswith(parts.netloc, start)):
        raise ValueError(f"{url!r} is not an absolute URL")
    rest = url[start + len(parts.netloc):]
    if rest and rest[0] not in "/?#":
        raise ValueError(f"{url!r} is not an absolute URL")
    userinfo, at, netloc = parts.netloc.rpartition("@")
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise ValueError(f"{url!r} has an unterminated IPv6 host")
        host, port_rest = netloc[: end + 1], netloc[end + 1 :]
    else:
        host, _, port_text = netloc.partition(":")
        port_rest = ":" + port_text if port_text or netloc.endswith(":") else ""
    if not host:
        raise ValueError(f"{url!r} has no host")
    if port_rest and not re.fullmatch(r":[0-9]{0,5}", port_rest):
        raise ValueError(f"{url!r} has an invalid port")
    port = int(port_rest[1:]) if port_rest[1:] else _DEFAULT_PORT_OF[scheme]
    if not 0 < port < 65536:
        raise ValueError(f"{url!r} has an invalid port")
    return _Split(scheme, userinfo + at, host, port, rest)


@dataclass(frozen=True, slots=True)
class Target:
    """An absolute URL with its host normalised.

    Attributes:
        url: the URL to fetch: lowercase scheme, the normalised host
            (:func:`wonders.policy.addresses.parse_host`), the port only if it is not the
            scheme's default, and the rest (user info, path, query) as given.
        scheme, host, port: its parts; ``(scheme, host.text, port)`` is its origin.
    """

    url: str
    scheme: str
    host: Host
    port: int

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host.text, self.port


def parse_target(url: str) -> Target:
    """The URL with its host normalised, as :meth:`Policy.decide` sees it.

    Raises ValueError for a URL that is not absolute http(s), or whose host is neither an
    address nor a valid name.
    """
    split = _split_url(url)
    host = parse_host(split.host)
    port = "" if split.port == _DEFAULT_PORT_OF[split.scheme] else f":{split.port}"
    return Target(f"{split.scheme}://{split.userinfo}{host.text}{port}{split.rest}",
                  split.scheme, host, split.port)
