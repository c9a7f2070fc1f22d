"""The GPU-side proxy (a mitmproxy addon) and ``wonder-run``.

Not built yet: this package is where issue 5 lands. Nothing here is registered as a
command until it works.
"""
