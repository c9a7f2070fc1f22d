"""The egress policy: which client may reach what, and how much. Pure code, no I/O except
reading the policy file and the bundles it names.

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
* Rates, concurrency and the daily egress budget are state, kept by :class:`Limiter` with
  an injected clock; going over gives a 429 decision with a retry-after. The budget counts
  every byte a request sends out: method, URL and headers (:func:`egress_bytes`) as well
  as the body. ``max_url_length`` and ``max_header_bytes`` cap a request's URL and
  headers (the forwarder answers 414 and 431, in either mode).
* :func:`load_policy` is strict (unknown keys, wrong types, bad patterns or CIDRs and
  unreadable bundles are errors naming the key path) and returns a new immutable
  :class:`Policy`, so a reload can swap it in whole.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from wonders.crypto import PublicBundle, check_name, load_public_bundle, parse_public_bundle
from wonders.errors import KeyFileError, PolicyError
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
    "AddressEntry",
    "AnyHost",
    "ClientPolicy",
    "Decision",
    "Guarded",
    "HostPattern",
    "Limiter",
    "Policy",
    "Target",
    "egress_bytes",
    "header_bytes",
    "load_policy",
    "normalize_host",
    "parse_policy",
    "parse_target",
]

Action = Literal["allow", "deny", "report"]
Network = IPv4Network | IPv6Network

DEFAULT_METHODS: Final = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
_DEFAULT_PORTS: Final = (80, 443)
_DEFAULT_SCHEMES: Final = ("http", "https")
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


def _entry(text: str) -> Entry:
    """Parse an allow/deny list item: a host pattern, an IP address or a CIDR."""
    try:
        if text.startswith("*."):
            return HostPattern.parse(text)
        if "/" in text:
            return AddressEntry(text, _network(text))
        address = parse_ip_literal(text)
        if address is not None:
            return AddressEntry(text, ip_network(address))
        return HostPattern.parse(text)
    except ValueError as exc:
        message = str(exc)
        if not message.startswith(repr(text)):
            message = f"{text!r}: {message}"
        raise ValueError(message) from None


def _network(text: str) -> Network:
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
    schemes: tuple[str, ...] = _DEFAULT_SCHEMES
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


# ------------------------------------------------------------------------------ limiter


@dataclass
class _ClientState:
    tokens: float
    stamp: float
    in_flight: int = 0
    day: date | None = None
    day_bytes: int = 0


def header_bytes(headers: Iterable[tuple[str, str]]) -> int:
    """Bytes a request's headers take on the wire: ``name: value`` and CRLF each."""
    return sum(len(name) + len(value) + 4 for name, value in headers)


def egress_bytes(method: str, url: str, headers: Iterable[tuple[str, str]],
                 body: int = 0) -> int:
    """What a request sends out, for the egress budget: its method, URL (UTF-8), headers
    (:func:`header_bytes`) and ``body`` bytes."""
    return len(method) + 1 + len(url.encode("utf-8", "surrogatepass")) + header_bytes(
        headers) + body


class Limiter:
    """Per-client rate (token bucket over a minute), concurrency and daily egress budget.

    ``clock`` returns Unix seconds (injected so tests drive time); days are UTC days.
    :meth:`admit` takes a concurrency slot that :meth:`release` gives back; :meth:`charge`
    adds request-body bytes as a streamed body arrives. Every byte that leaves counts
    against the budget: give :meth:`admit` the request's :func:`egress_bytes` (URL and
    headers, and the body when it is known up front).
    """

    def __init__(self, policy: Policy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._state: dict[str, _ClientState] = {}

    def update(self, policy: Policy) -> None:
        """Use a reloaded policy; counters carry over."""
        self._policy = policy

    def _entry(self, client: str) -> tuple[ClientPolicy, _ClientState] | None:
        entry = self._policy.clients.get(client)
        if entry is None:
            return None
        now = self._clock()
        state = self._state.get(client)
        if state is None:
            state = self._state[client] = _ClientState(float(entry.rate_per_minute or 0), now)
        if entry.rate_per_minute is not None:
            rate = entry.rate_per_minute / 60.0
            elapsed = max(0.0, now - state.stamp)
            state.tokens = min(float(entry.rate_per_minute), state.tokens + elapsed * rate)
        state.stamp = now
        today = datetime.fromtimestamp(now, UTC).date()
        if state.day != today:
            state.day, state.day_bytes = today, 0
        return entry, state

    def _over(self, entry: ClientPolicy, rule: str, reason: str, retry: float) -> Decision:
        if entry.mode == "report":
            return Decision("report", rule, f"would deny: {reason}", 200, retry)
        return _deny(rule, reason, 429, retry)

    def _until_tomorrow(self) -> float:
        now = self._clock()
        tomorrow = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)
        return datetime.combine(tomorrow, time(), UTC).timestamp() - now

    def admit(self, client: str, request_bytes: int = 0) -> Decision:
        """Take a slot for one request that sends ``request_bytes`` out: its URL and
        headers, and its body unless that is streamed (and :meth:`charge`d as it goes)."""
        found = self._entry(client)
        if found is None:
            return _deny("no client entry", f"client {client!r} is not in the policy")
        entry, state = found
        who = f"client {client}"
        if entry.max_concurrent is not None and state.in_flight >= entry.max_concurrent:
            return self._over(entry, f"{who}: max_concurrent {entry.max_concurrent}",
                              f"{client} already has {state.in_flight} requests in flight", 1.0)
        if entry.rate_per_minute is not None and state.tokens < 1.0:
            wait = (1.0 - state.tokens) * 60.0 / entry.rate_per_minute
            return self._over(entry, f"{who}: rate_per_minute {entry.rate_per_minute}",
                              f"{client} is over {entry.rate_per_minute} requests a minute", wait)
        budget = entry.egress_bytes_per_day
        if budget is not None and state.day_bytes + request_bytes > budget:
            return self._over(entry, f"{who}: egress_bytes_per_day {budget}",
                              f"{client}'s egress budget of {budget} bytes a day is spent",
                              self._until_tomorrow())
        if entry.rate_per_minute is not None:
            state.tokens -= 1.0
        state.in_flight += 1
        state.day_bytes += request_bytes
        return _allow(f"{who}: limits", "within rate, concurrency and budget")

    def charge(self, client: str, nbytes: int) -> Decision:
        """Count ``nbytes`` more of a streamed request body against the daily budget."""
        found = self._entry(client)
        if found is None:
            return _deny("no client entry", f"client {client!r} is not in the policy")
        entry, state = found
        budget = entry.egress_bytes_per_day
        if budget is not None and state.day_bytes + nbytes > budget:
            return self._over(entry, f"client {client}: egress_bytes_per_day {budget}",
                              f"{client}'s egress budget of {budget} bytes a day is spent",
                              self._until_tomorrow())
        state.day_bytes += nbytes
        return _allow(f"client {client}: limits", "within budget")

    def release(self, client: str) -> None:
        state = self._state.get(client)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1

    def in_flight(self, client: str) -> int:
        state = self._state.get(client)
        return state.in_flight if state else 0


# ------------------------------------------------------------------------------ loading

_LIMIT_KEYS = ("max_request_bytes", "max_response_bytes", "rate_per_minute", "max_concurrent",
               "egress_bytes_per_day", "max_header_bytes", "max_url_length")
_SETTING_KEYS = ("methods", "ports", "schemes", *_LIMIT_KEYS, "mode", "allow_private",
                 "follow_redirects")
_CLIENT_KEYS = ("bundle", "allow", "deny", "not_before", "not_after", *_SETTING_KEYS)
_TOP_KEYS = ("allow", "deny", "defaults", "clients")
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class _Loader:
    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base

    def fail(self, path: str, problem: str) -> PolicyError:
        return PolicyError(f"{self.source}: {path}: {problem}")

    def keys(self, table: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                where = f"{path}.{key}" if path else key
                raise self.fail(where, f"unknown key{hint}; known keys: {', '.join(allowed)}")

    def table(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a table, not {_kind(value)}")
        return value

    def strings(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(path, "expected a list of strings")
        return value

    def entries(self, value: Any, path: str) -> tuple[Entry, ...]:
        out = []
        for i, text in enumerate(self.strings(value, path)):
            try:
                out.append(_entry(text))
            except ValueError as exc:
                raise self.fail(f"{path}[{i}]", str(exc)) from None
        return tuple(out)

    def limit(self, value: Any, path: str, *, sizes: bool) -> int | None:
        if value == "unlimited":
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if sizes and isinstance(value, str):
            match = _SIZE.fullmatch(value)
            if match:
                unit = (match.group(2) or "B").lower()
                return int(float(match.group(1)) * _UNITS[unit])
        what = "a byte count (e.g. 10485760 or \"10 MiB\")" if sizes else "a whole number"
        raise self.fail(path, f"expected {what} or \"unlimited\", not {value!r}")

    def setting(self, key: str, value: Any, path: str) -> Any:
        if key == "methods":
            methods = self.strings(value, path)
            for m in methods:
                if not re.fullmatch(r"[A-Z][A-Z0-9_-]*", m):
                    raise self.fail(path, f"{m!r} is not an upper-case HTTP method")
            return tuple(methods)
        if key == "ports":
            if not isinstance(value, list) or not all(
                isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in value
            ):
                raise self.fail(path, "expected a list of port numbers (1-65535)")
            return tuple(value)
        if key == "schemes":
            schemes = self.strings(value, path)
            bad = [s for s in schemes if s not in _DEFAULT_SCHEMES]
            if bad:
                raise self.fail(path, f"unsupported scheme {bad[0]!r}; use 'http' or 'https'")
            return tuple(schemes)
        if key in _LIMIT_KEYS:
            return self.limit(value, path, sizes=key.endswith("bytes") or key.endswith("day"))
        if key == "mode":
            if value not in ("enforce", "report"):
                raise self.fail(path, f"expected \"enforce\" or \"report\", not {value!r}")
            return value
        if key == "allow_private":
            networks = []
            for i, text in enumerate(self.strings(value, path)):
                try:
                    networks.append(_network(text))
                except ValueError as exc:
                    raise self.fail(f"{path}[{i}]", f"{text!r}: {exc}") from None
            return tuple(networks)
        if key == "follow_redirects":
            if not isinstance(value, bool):
                raise self.fail(path, "expected true or false")
            return value
        raise AssertionError(key)

    def moment(self, value: Any, path: str) -> float:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise self.fail(path, "give a time zone, e.g. 2026-12-01T00:00:00Z")
            return value.timestamp()
        if isinstance(value, date):
            return datetime.combine(value, time(), UTC).timestamp()
        raise self.fail(path, "expected a TOML date or date-time, e.g. 2026-12-01T00:00:00Z")

    def bundle(self, value: Any, path: str, name: str) -> PublicBundle:
        try:
            if isinstance(value, str):
                bundle = load_public_bundle(self.base / value)
            elif isinstance(value, dict):
                bundle = parse_public_bundle(json.dumps(value).encode(), f"{path} (inline)")
            else:
                raise self.fail(path, "expected a path to a .pub file or an inline table")
        except KeyFileError as exc:
            raise self.fail(path, str(exc)) from None
        if bundle.name != name:
            raise self.fail(path, f"the bundle is for {bundle.name!r}, not {name!r}")
        return bundle


def _kind(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean",
            list: "a list"}.get(type(value), type(value).__name__)


def parse_policy(text: str, *, source: str = "<policy>", base: Path | None = None) -> Policy:
    """Parse policy TOML; bundle paths are relative to ``base`` (the file's directory)."""
    loader = _Loader(source, base or Path("."))
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    loader.keys(doc, _TOP_KEYS, "")
    allow = loader.entries(doc.get("allow", []), "allow")
    deny = loader.entries(doc.get("deny", []), "deny")
    defaults_table = loader.table(doc.get("defaults", {}), "defaults")
    loader.keys(defaults_table, _SETTING_KEYS, "defaults")
    defaults = {k: loader.setting(k, v, f"defaults.{k}") for k, v in defaults_table.items()}
    clients: dict[str, ClientPolicy] = {}
    kids: dict[str, str] = {}
    for name, raw in loader.table(doc.get("clients", {}), "clients").items():
        path = f"clients.{name}"
        try:
            check_name(name)
        except ValueError as exc:
            raise loader.fail(path, str(exc)) from None
        table = loader.table(raw, path)
        loader.keys(table, _CLIENT_KEYS, path)
        if "bundle" not in table:
            raise loader.fail(f"{path}.bundle", "missing: every client needs its public bundle")
        values: dict[str, Any] = dict(defaults)
        for key, value in table.items():
            where = f"{path}.{key}"
            if key == "bundle":
                values[key] = loader.bundle(value, where, name)
            elif key in ("allow", "deny"):
                values[key] = loader.entries(value, where)
            elif key in ("not_before", "not_after"):
                values[key] = loader.moment(value, where)
            else:
                values[key] = loader.setting(key, value, where)
        kid = values["bundle"].kid
        if kid in kids:
            raise loader.fail(f"{path}.bundle", f"same key as clients.{kids[kid]}")
        kids[kid] = name
        clients[name] = ClientPolicy(name=name, **values)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Policy(clients, allow, deny, source, digest)


def load_policy(path: str | Path) -> Policy:
    """Load a policy file (see the README for its keys)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{p}: no such policy file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{p}: cannot read policy file: {exc}") from None
    return parse_policy(text, source=str(p), base=p.parent)
