"""The ``wonders`` command.

Errors that wonders raises on purpose (:class:`~wonders.errors.WondersError`) end the
command with one line on stderr and the error's exit status: 1 for a failure, 2 for input
to fix (bad usage, configuration or policy, as click does for usage).
"""

from __future__ import annotations

import sys

import click

from wonders import __version__
from wonders.cli.audit import audit
from wonders.cli.forward import forward
from wonders.cli.keys import keygen
from wonders.cli.onboard import clients, init
from wonders.cli.policy import policy
from wonders.cli.status import ping, status
from wonders.errors import WondersError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except WondersError as exc:
            click.echo(f"wonders: error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wonders")
def main() -> None:
    """Relay controlled HTTP(S) requests from air-gapped GPU nodes through a bucket."""


main.add_command(keygen)
main.add_command(policy)
main.add_command(forward)
main.add_command(audit)
main.add_command(init)
main.add_command(clients)
main.add_command(status)
main.add_command(ping)


if __name__ == "__main__":  # pragma: no cover
    main()
