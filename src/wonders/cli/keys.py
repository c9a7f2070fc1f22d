"""``wonders keygen``: a key pair for a client or a forwarder."""

from __future__ import annotations

from pathlib import Path

import click

from wonders.crypto import PrivateKey, check_name, write_key_files

__all__ = ["keygen"]


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.argument("name", callback=_name)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write NAME.key and NAME.pub into.",
)
@click.option("--force", is_flag=True, help="Replace existing NAME.key / NAME.pub files.")
def keygen(name: str, out_dir: Path, force: bool) -> None:
    """Create a key pair: NAME.key (private, mode 0600) and NAME.pub (public bundle).

    Prints the key id. Give NAME.pub to the other side (a client's bundle goes into the
    forwarder's policy; the forwarder's bundle is pinned by every client). NAME.key never
    leaves this machine.
    """
    key = PrivateKey.generate(name)
    key_path, pub_path = write_key_files(key, out_dir, force=force)
    click.echo(f"wrote {key_path} (private, keep it here) and {pub_path} (public bundle)")
    click.echo(f"key id: {key.kid}")
