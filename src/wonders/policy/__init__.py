"""The egress policy: who may reach what. Pure decision logic: :meth:`Policy.decide` (rules,
methods, windows, sizes), the address guard the forwarder's resolver applies
(:mod:`.addresses`: IP classes, one host definition), the rate and byte budgets
(:class:`Limiter`, time injected), and loading a policy file (:func:`load_policy`)."""

from typing import TYPE_CHECKING

from wonders.exports import lazy

if TYPE_CHECKING:
    from wonders.policy import addresses
    from wonders.policy._rules import (
        DEFAULT_METHODS,
        AddressEntry,
        AnyHost,
        ClientPolicy,
        Decision,
        Guarded,
        HostPattern,
        Limiter,
        Policy,
        Target,
        egress_bytes,
        header_bytes,
        load_policy,
        normalize_host,
        parse_policy,
        parse_target,
    )

_RULES = [
    "DEFAULT_METHODS", "AddressEntry", "AnyHost", "ClientPolicy", "Decision", "Guarded",
    "HostPattern", "Limiter", "Policy", "Target", "egress_bytes", "header_bytes",
    "load_policy", "normalize_host", "parse_policy", "parse_target",
]

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
    "addresses",
    "egress_bytes",
    "header_bytes",
    "load_policy",
    "normalize_host",
    "parse_policy",
    "parse_target",
]

__getattr__, __dir__ = lazy(__name__, dict.fromkeys(_RULES, "._rules"))
