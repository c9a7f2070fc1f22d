"""``wonders policy check``: what a policy decides for given URLs."""

from __future__ import annotations

import socket
import sys
import time
from ipaddress import ip_address
from pathlib import Path

import click

from wonders.policy import Decision, Policy, load_policy, parse_target
from wonders.policy.addresses import IPAddress

__all__ = ["policy"]


@click.group()
def policy() -> None:
    """Check and explain the egress policy."""


def _resolve(host: str) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return list(dict.fromkeys(ip_address(info[4][0]) for info in infos))


def _explain(
    rules: Policy, client: str, method: str, url: str, now: float, resolve: bool
) -> Decision:
    decision = rules.decide(client, method, url, now=now)
    if not (resolve and decision.allowed):
        return decision
    try:
        host = parse_target(url).host  # the host as the forwarder will look it up
    except ValueError:
        return decision
    if host.address is not None:
        return decision  # decide() already applied the address guard
    guarded = rules.guard(client, host.text, _resolve(host.text))
    return decision if guarded.decision.allowed else guarded.decision


@policy.command("check")
@click.option("--policy", "policy_file", required=True, type=click.Path(path_type=Path),
              help="The policy file (TOML).")
@click.option("--client", help="The client whose requests to decide (needed with URLs).")
@click.option("--method", default="GET", show_default=True, help="The HTTP method.")
@click.option("--resolve", is_flag=True,
              help="Also look the host names up in DNS and apply the private-address guard.")
@click.argument("urls", nargs=-1)
def policy_check(
    policy_file: Path, client: str | None, method: str, resolve: bool, urls: tuple[str, ...]
) -> None:
    """Validate a policy file, or decide URLs for a client and name the rule for each.

    Without URLs, only validates the file. With URLs, prints one line per URL:
    the decision (ALLOW, DENY, or REPORT for allowed-but-would-deny in report mode), the
    URL and the rule that decided. Exits 0 if every URL is allowed, 1 otherwise; an
    invalid policy file exits 2. Without --resolve no DNS lookup is made, so host names
    are decided by the allow/deny rules alone (IP-literal hosts always meet the guard).
    """
    rules = load_policy(policy_file)
    if not urls:
        names = ", ".join(rules.clients) or "none"
        click.echo(f"{policy_file}: valid; clients: {names}; digest {rules.digest[:16]}")
        return
    if client is None:
        raise click.UsageError("--client is required to decide URLs")
    if client not in rules.clients:
        raise click.UsageError(
            f"client {client!r} is not in {policy_file} (clients: {', '.join(rules.clients)})"
        )
    now = time.time()
    all_allowed = True
    for url in urls:
        decision = _explain(rules, client, method.upper(), url, now, resolve)
        all_allowed &= decision.allowed
        click.echo(f"{decision.action.upper():<6} {method.upper()} {url}  [{decision.rule}]"
                   f"  {decision.reason}")
    sys.exit(0 if all_allowed else 1)
