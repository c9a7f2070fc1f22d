"""The egress policy: who may reach what. Pure decision logic in :mod:`.rules`
(:meth:`Policy.decide`: rules, methods, windows, sizes; :meth:`Policy.guard`, the address
guard the forwarder's resolver applies, over :mod:`.addresses`' IP classes and its one host
definition), the rate and byte budgets in :mod:`.limiter` (:class:`Limiter`, time injected),
and loading a policy file in :mod:`.loading` (:func:`load_policy`)."""

from typing import TYPE_CHECKING

from wonders.exports import lazy

if TYPE_CHECKING:
    from wonders.policy import addresses
    from wonders.policy.limiter import Limiter, egress_bytes, header_bytes
    from wonders.policy.loading import load_policy, parse_policy
    from wonders.policy.rules import (
        DEFAULT_METHODS,
        AddressEntry,
        AnyHost,
        ClientPolicy,
        Decision,
        Guarded,
        HostPattern,
        Policy,
        Target,
        normalize_host,
        parse_target,
    )

_RULES = [
    "DEFAULT_METHODS", "AddressEntry", "AnyHost", "ClientPolicy", "Decision", "Guarded",
    "HostPattern", "Policy", "Target", "normalize_host", "parse_target",
]
_LIMITER = ["Limiter", "egress_bytes", "header_bytes"]
_LOADING = ["load_policy", "parse_policy"]

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

__getattr__, __dir__ = lazy(__name__, {
    "addresses": ".addresses",
    **dict.fromkeys(_RULES, ".rules"),
    **dict.fromkeys(_LIMITER, ".limiter"),
    **dict.fromkeys(_LOADING, ".loading"),
})
