"""The egress policy: decisions, the address guard, limits, and strict loading."""

from __future__ import annotations

import dataclasses
import json
from ipaddress import ip_address
from pathlib import Path

import pytest

from wonders.crypto import PrivateKey, write_key_files
from wonders.errors import PolicyError
from wonders.policy import Limiter, Policy, load_policy, parse_policy

MIDNIGHT = 1_795_305_600.0  # 2026-11-22T00:00:00Z
NOON = MIDNIGHT + 12 * 3600

POLICY = """
allow = ["pypi.org"]
deny = ["*.evil.com", "203.0.113.0/24"]

[defaults]
ports = [80, 443]

[clients.gpu01]
bundle = "gpu01.pub"
allow = ["files.pythonhosted.org", "*.huggingface.co", "*.hf.co", "bücher.example",
         "93.184.216.34", "example.com", "10.1.2.0/24"]
deny = ["cdn.hf.co"]
methods = ["GET", "HEAD", "POST"]
allow_private = ["10.1.2.0/24"]

[clients.gpu02]
bundle = "gpu02.pub"
allow = ["example.com"]
mode = "report"

[clients.setup]
bundle = "setup.pub"
allow = ["*.pythonhosted.org"]
schemes = ["https"]
ports = [443]
not_before = 2026-11-22T06:00:00Z
not_after = 2026-11-22T18:00:00Z
"""


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    for name in ("gpu01", "gpu02", "setup", "other"):
        write_key_files(PrivateKey.generate(name), directory)
    return directory


@pytest.fixture(scope="module")
def policy(keydir: Path) -> Policy:
    path = keydir / "policy.toml"
    path.write_text(POLICY)
    return load_policy(path)


# client, method, url, action, rule (exact), clock
DECISIONS = [
    ("gpu01", "GET", "https://files.pythonhosted.org/p/x.whl", "allow",
     'client gpu01: allow[0] "files.pythonhosted.org"', NOON),
    ("gpu01", "GET", "https://FILES.PythonHosted.ORG./x", "allow",
     'client gpu01: allow[0] "files.pythonhosted.org"', NOON),
    ("gpu01", "GET", "https://cdn-lfs.huggingface.co/x", "allow",
     'client gpu01: allow[1] "*.huggingface.co"', NOON),
    ("gpu01", "GET", "https://huggingface.co/", "deny", "client gpu01: default deny", NOON),
    ("gpu01", "GET", "https://a.b.c.hf.co/", "allow", 'client gpu01: allow[2] "*.hf.co"', NOON),
    ("gpu01", "GET", "https://hf.co/", "deny", "client gpu01: default deny", NOON),
    ("gpu01", "GET", "https://evilhf.co/", "deny", "client gpu01: default deny", NOON),
    ("gpu01", "GET", "https://cdn.hf.co/", "deny", 'client gpu01: deny[0] "cdn.hf.co"', NOON),
    ("gpu01", "GET", "https://hf.co.evil.com/", "deny", 'global: deny[0] "*.evil.com"', NOON),
    ("gpu01", "GET", "https://example.com.evil.com/", "deny", 'global: deny[0] "*.evil.com"',
     NOON),
    ("gpu01", "GET", "https://evilexample.com/", "deny", "client gpu01: default deny", NOON),
    ("gpu01", "GET", "https://example.com.attacker.net/", "deny", "client gpu01: default deny",
     NOON),
    ("gpu01", "GET", "https://user:pw@example.com:443/", "allow",
     'client gpu01: allow[5] "example.com"', NOON),
    ("gpu01", "GET", "https://pypi.org/simple/", "allow", 'global: allow[0] "pypi.org"', NOON),
    ("gpu01", "GET", "https://xn--bcher-kva.example/", "allow",
     'client gpu01: allow[3] "bücher.example"', NOON),
    ("gpu01", "GET", "https://bücher.example/", "allow", 'client gpu01: allow[3] "bücher.example"',
     NOON),
    ("gpu01", "GET", "https://BÜCHER.example/", "allow",
     'client gpu01: allow[3] "bücher.example"', NOON),
    ("gpu01", "GET", "http://127.0.0.1/", "deny", "address guard: loopback", NOON),
    ("gpu01", "GET", "http://2130706433/", "deny", "address guard: loopback", NOON),
    ("gpu01", "GET", "http://0x7f.1/", "deny", "address guard: loopback", NOON),
    ("gpu01", "GET", "http://0177.0.0.1:80/", "deny", "address guard: loopback", NOON),
    ("gpu01", "GET", "http://[::1]/", "deny", "address guard: loopback", NOON),
    ("gpu01", "GET", "http://[::ffff:127.0.0.1]/", "deny", "address guard: IPv4-mapped loopback",
     NOON),
    ("gpu01", "GET", "http://169.254.169.254/latest/meta-data/", "deny",
     "address guard: cloud metadata (link-local)", NOON),
    ("gpu01", "GET", "http://93.184.216.34/", "allow", 'client gpu01: allow[4] "93.184.216.34"',
     NOON),
    ("gpu01", "GET", "http://8.8.8.8/", "deny", "client gpu01: default deny", NOON),
    ("gpu01", "GET", "http://10.1.2.3/", "allow", 'client gpu01: allow[6] "10.1.2.0/24"', NOON),
    ("gpu01", "GET", "http://10.1.3.1/", "deny", "address guard: private (RFC 1918)", NOON),
    ("gpu01", "GET", "http://203.0.113.5/", "deny", 'global: deny[1] "203.0.113.0/24"', NOON),
    ("gpu01", "DELETE", "https://pypi.org/", "deny",
     "client gpu01: methods ['GET', 'HEAD', 'POST']", NOON),
    ("gpu01", "GET", "https://pypi.org:8443/", "deny", "client gpu01: ports [80, 443]", NOON),
    ("gpu01", "GET", "ftp://pypi.org/", "deny", "client gpu01: malformed URL", NOON),
    ("gpu01", "GET", "https://1.2.3.999/", "deny", "client gpu01: malformed host", NOON),
    ("gpu01", "GET", "https://pypi.org:99999/", "deny", "client gpu01: malformed URL", NOON),
    ("gpu02", "GET", "https://example.com/", "allow", 'client gpu02: allow[0] "example.com"',
     NOON),
    ("gpu02", "GET", "https://other.org/", "report", "client gpu02: default deny", NOON),
    ("gpu02", "GET", "http://127.0.0.1/", "deny", "address guard: loopback", NOON),
    ("setup", "GET", "https://files.pythonhosted.org/", "allow",
     'client setup: allow[0] "*.pythonhosted.org"', NOON),
    ("setup", "GET", "https://files.pythonhosted.org/", "deny",
     "client setup: not_before 2026-11-22T06:00:00Z", MIDNIGHT),
    ("setup", "GET", "https://files.pythonhosted.org/", "deny",
     "client setup: not_after 2026-11-22T18:00:00Z", MIDNIGHT + 20 * 3600),
    ("setup", "GET", "http://files.pythonhosted.org/", "deny", "client setup: schemes ['https']",
     NOON),
    ("nobody", "GET", "https://pypi.org/", "deny", "no client entry", NOON),
]


@pytest.mark.parametrize(
    ("client", "method", "url", "action", "rule", "now"),
    DECISIONS,
    ids=[f"{c}-{m}-{u}" for c, m, u, *_ in DECISIONS],
)
def test_the_policy_decides_each_row_by_the_rule_it_names(
    policy: Policy, client: str, method: str, url: str, action: str, rule: str, now: float
) -> None:
    decision = policy.decide(client, method, url, now=now)
    assert (decision.action, decision.rule) == (action, rule), decision.reason
    assert decision.reason
    assert decision.status == (403 if action == "deny" else 200)


def test_every_allow_and_deny_entry_of_the_policy_decides_a_row_of_the_table(
    policy: Policy,
) -> None:
    """An entry added to POLICY without a row that it decides fails, as does a cut table."""
    decided = {policy.decide(client, method, url, now=now).rule
               for client, method, url, _, _, now in DECISIONS}
    scopes = [("global", policy), *((f"client {c.name}", c) for c in policy.clients.values())]
    entries = {f'{scope}: {kind}[{i}] "{entry.text}"'
               for scope, rules in scopes for kind in ("allow", "deny")
               for i, entry in enumerate(getattr(rules, kind))}
    assert entries - decided == set()


def test_report_mode_says_what_it_would_deny(policy: Policy) -> None:
    decision = policy.decide("gpu02", "GET", "https://other.org/", now=NOON)
    assert decision.allowed
    assert decision.reason == "would deny: no allow rule matches other.org"


def test_a_request_body_over_max_request_bytes_is_denied(policy: Policy) -> None:
    limit = policy.clients["gpu01"].max_request_bytes
    assert limit == 16 * 1024 * 1024
    assert policy.decide("gpu01", "POST", "https://pypi.org/", now=NOON,
                         request_bytes=limit).allowed
    over = policy.decide("gpu01", "POST", "https://pypi.org/", now=NOON, request_bytes=limit + 1)
    assert over.rule == f"client gpu01: max_request_bytes {limit}"


# ------------------------------------------------------------------------------ guard


@pytest.mark.parametrize(
    ("client", "resolved", "chosen", "rule"),
    [
        ("gpu01", ["127.0.0.1"], None, "address guard: loopback"),
        ("gpu01", ["10.0.0.5", "93.184.216.34"], "93.184.216.34", "address guard: public"),
        ("gpu01", ["10.1.2.7"], "10.1.2.7", 'client gpu01: allow_private[0] "10.1.2.0/24"'),
        ("gpu01", ["::ffff:10.1.2.7"], "::ffff:10.1.2.7",
         'client gpu01: allow_private[0] "10.1.2.0/24"'),
        ("gpu01", ["169.254.169.254", "fd00::1"], None,
         "address guard: cloud metadata (link-local)"),
        ("gpu01", ["203.0.113.10"], None, 'global: deny[1] "203.0.113.0/24"'),
        ("gpu01", [], None, "address guard: no address"),
        ("gpu02", ["127.0.0.1"], None, "address guard: loopback"),
        ("gpu02", ["2606:4700::1"], "2606:4700::1", "address guard: public"),
    ],
)
def test_guard_returns_the_address_to_connect_to(
    policy: Policy, client: str, resolved: list[str], chosen: str | None, rule: str
) -> None:
    guarded = policy.guard(client, "host.example", [ip_address(a) for a in resolved])
    assert guarded.address == (ip_address(chosen) if chosen else None)
    assert guarded.decision.rule == rule
    assert guarded.decision.allowed is (chosen is not None)
    if chosen is None:
        assert guarded.decision.action == "deny"
        assert guarded.decision.reason.startswith("host.example ")


# ---------------------------------------------------------------------------- limiter


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _limited(keydir: Path, settings: str) -> Policy:
    return parse_policy(f'[clients.gpu01]\nbundle = "gpu01.pub"\n{settings}\n', base=keydir)


def test_rate_limit_refills_with_time(keydir: Path) -> None:
    clock = Clock(NOON)
    limiter = Limiter(_limited(keydir, "rate_per_minute = 3"), clock)
    for _ in range(3):
        assert limiter.admit("gpu01").allowed
        limiter.release("gpu01")
    over = limiter.admit("gpu01")
    assert (over.action, over.status) == ("deny", 429)
    assert over.rule == "client gpu01: rate_per_minute 3"
    assert over.retry_after == pytest.approx(20.0)
    clock.now += 19.9
    assert not limiter.admit("gpu01").allowed
    clock.now += 0.2
    assert limiter.admit("gpu01").allowed


def test_max_concurrent_refuses_with_429_until_a_request_is_released(keydir: Path) -> None:
    limiter = Limiter(_limited(keydir, "max_concurrent = 2"), Clock(NOON))
    assert limiter.admit("gpu01").allowed
    assert limiter.admit("gpu01").allowed
    over = limiter.admit("gpu01")
    assert (over.status, over.rule) == (429, "client gpu01: max_concurrent 2")
    assert limiter.in_flight("gpu01") == 2
    limiter.release("gpu01")
    assert limiter.admit("gpu01").allowed


def test_egress_budget_per_utc_day(keydir: Path) -> None:
    clock = Clock(NOON)
    limiter = Limiter(_limited(keydir, 'egress_bytes_per_day = "1 KiB"'), clock)
    assert limiter.admit("gpu01", request_bytes=600).allowed
    over = limiter.admit("gpu01", request_bytes=500)
    assert (over.status, over.rule) == (429, "client gpu01: egress_bytes_per_day 1024")
    assert over.retry_after == pytest.approx(12 * 3600)
    assert limiter.charge("gpu01", 424).allowed
    assert not limiter.charge("gpu01", 1).allowed
    clock.now = MIDNIGHT + 24 * 3600 + 1  # the next UTC day
    assert limiter.admit("gpu01", request_bytes=1000).allowed


def test_report_mode_records_limits_without_refusing(keydir: Path) -> None:
    limiter = Limiter(_limited(keydir, 'max_concurrent = 1\nmode = "report"'), Clock(NOON))
    assert limiter.admit("gpu01").action == "allow"
    second = limiter.admit("gpu01")
    assert (second.action, second.status) == ("report", 200)
    assert second.reason.startswith("would deny: ")


def test_counters_survive_a_reload(keydir: Path) -> None:
    limiter = Limiter(_limited(keydir, "max_concurrent = 1"), Clock(NOON))
    assert limiter.admit("gpu01").allowed
    limiter.update(_limited(keydir, "max_concurrent = 1\nrate_per_minute = 100"))
    assert not limiter.admit("gpu01").allowed


def test_unknown_client_is_refused_by_the_limiter(policy: Policy) -> None:
    assert Limiter(policy, Clock(NOON)).admit("nobody").rule == "no client entry"


# ---------------------------------------------------------------------------- loading


def test_loaded_policy_is_immutable(policy: Policy) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.allow = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.clients["x"] = policy.clients["gpu01"]  # type: ignore[index]


def test_loading_fills_defaults_and_keys(policy: Policy, keydir: Path) -> None:
    gpu01 = policy.clients["gpu01"]
    assert gpu01.ports == (80, 443)
    assert gpu01.max_response_bytes is None
    assert policy.client_by_kid(gpu01.bundle.kid) is gpu01
    assert policy.sender(gpu01.bundle.kid) is gpu01.bundle
    assert policy.sender("0" * 32) is None
    assert len(policy.digest) == 64


def test_a_bundle_may_be_inline_and_sizes_may_have_units(keydir: Path) -> None:
    pub = (keydir / "gpu01.pub").read_text()
    inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in json.loads(pub).items())
    rules = parse_policy(
        f'[clients.gpu01]\nbundle = {{ {inline} }}\nmax_response_bytes = "2.5 GiB"\n'
        'max_request_bytes = "unlimited"\n'
    )
    assert rules.clients["gpu01"].max_response_bytes == int(2.5 * 2**30)
    assert rules.clients["gpu01"].max_request_bytes is None


GPU01 = '[clients.gpu01]\nbundle = "gpu01.pub"\n'
LOAD_ERRORS = [
    ("alow = []", "alow: unknown key (did you mean 'allow'?)"),
    (GPU01 + "alow = []", "clients.gpu01.alow: unknown key (did you mean 'allow'?)"),
    (GPU01 + 'ports = "443"', "clients.gpu01.ports: expected a list of port numbers"),
    (GPU01 + "ports = [70000]", "clients.gpu01.ports: expected a list of port numbers"),
    (GPU01 + 'allow = ["ok.com", "hf.*.co"]',
     "clients.gpu01.allow[1]: 'hf.*.co': '*' is only allowed as a leading '*.'"),
    ('allow = ["*hf.co"]', "allow[0]: '*hf.co': '*' is only allowed as a leading '*.'"),
    ('allow = ["*.10.0.0.1"]', "allow[0]: '*.10.0.0.1': an address cannot take a wildcard"),
    ('deny = ["1.2.3.999"]', "deny[0]: '1.2.3.999' is out of the IPv4 range"),
    ('allow = ["bad_name!.com"]', "allow[0]: 'bad_name!.com': invalid host name"),
    (GPU01 + 'allow_private = ["10.0.0.1/8"]',
     "clients.gpu01.allow_private[0]: '10.0.0.1/8': invalid CIDR: 10.0.0.1/8 has host bits set"),
    (GPU01 + 'allow_private = ["intranet"]',
     "clients.gpu01.allow_private[0]: 'intranet': not an IP address or CIDR"),
    ("[clients.gpu01]\nallow = []", "clients.gpu01.bundle: missing"),
    ('[clients.gpu01]\nbundle = "nope.pub"', "clients.gpu01.bundle: "),
    ('[clients.gpu01]\nbundle = "gpu02.pub"',
     "clients.gpu01.bundle: the bundle is for 'gpu02', not 'gpu01'"),
    ("[clients.gpu01]\nbundle = 5", "clients.gpu01.bundle: expected a path to a .pub file"),
    (GPU01 + 'mode = "strict"', 'clients.gpu01.mode: expected "enforce" or "report"'),
    (GPU01 + "not_after = 2026-12-01T00:00:00", "clients.gpu01.not_after: give a time zone"),
    (GPU01 + 'not_after = "tomorrow"', "clients.gpu01.not_after: expected a TOML date"),
    (GPU01 + 'max_response_bytes = "lots"',
     'clients.gpu01.max_response_bytes: expected a byte count (e.g. 10485760 or "10 MiB")'),
    (GPU01 + "rate_per_minute = true", "clients.gpu01.rate_per_minute: expected a whole number"),
    (GPU01 + 'rate_per_minute = "10 MiB"',
     "clients.gpu01.rate_per_minute: expected a whole number"),
    (GPU01 + 'follow_redirects = "yes"', "clients.gpu01.follow_redirects: expected true or false"),
    (GPU01 + 'methods = ["get"]', "clients.gpu01.methods: 'get' is not an upper-case HTTP method"),
    (GPU01 + 'schemes = ["ftp"]', "clients.gpu01.schemes: unsupported scheme 'ftp'"),
    ("[defaults]\nbundle = 'x.pub'", "defaults.bundle: unknown key"),
    ("[defaults]\nports = [0]", "defaults.ports: expected a list of port numbers"),
    ("clients = 3", "clients: expected a table, not 3"),
    ("[clients.'bad name']\nbundle = 'x.pub'", "clients.bad name: invalid name 'bad name'"),
    (GPU01 + '[clients.again]\nbundle = "gpu01.pub"', "clients.again.bundle: the bundle is for"),
    ("allow = [", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), LOAD_ERRORS, ids=[m[:40] for _, m in LOAD_ERRORS])
def test_load_errors_name_the_key_path(keydir: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="policy.toml", base=keydir)
    assert str(info.value).startswith("policy.toml: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_one_key_under_two_client_names_is_refused(keydir: Path) -> None:
    """A key id covers the keys, not the name: a renamed copy of a bundle is a valid
    bundle, but one key may belong to one client only."""
    renamed = (keydir / "gpu01.pub").read_text().replace('"gpu01"', '"gpu01b"')
    (keydir / "gpu01b.pub").write_text(renamed)
    text = GPU01 + '[clients.gpu01b]\nbundle = "gpu01b.pub"\n'
    with pytest.raises(PolicyError, match=r"clients\.gpu01b\.bundle: same key as clients\.gpu01"):
        parse_policy(text, base=keydir)


def test_a_missing_policy_file_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "absent.toml")


def test_the_package_exports_each_name_from_the_module_of_its_job() -> None:
    import importlib

    import wonders.policy as package

    for name in package.__all__:
        if name == "addresses":
            importlib.import_module("wonders.policy.addresses")
        else:
            assert getattr(package, name) is not None, name
    assert package.Policy.__module__ == package.Decision.__module__ == "wonders.policy.rules"
    assert package.Limiter.__module__ == package.egress_bytes.__module__ == (
        "wonders.policy.limiter")
    assert package.load_policy.__module__ == package.parse_policy.__module__ == (
        "wonders.policy.loading")
