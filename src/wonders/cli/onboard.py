"""``wonders init`` and ``wonders clients``: keys, config files and the policy's client
entries, edited as text so that the rest of the policy file (and its comments) stays."""

from __future__ import annotations

import grp
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import click

from wonders.crypto import (
    PrivateKey,
    check_name,
    load_public_bundle,
    parse_public_bundle,
    write_key_files,
)
from wonders.errors import ConfigError, KeyFileError, PolicyError
from wonders.policy import Policy, parse_policy
from wonders.text import table

__all__ = ["clients", "init"]

_POLICY_SKELETON = """\
# The egress policy of forwarder {name}: deny by default; a request goes out only if its
# client has an entry below and an allow rule matches. Keys: see docs/policy.md.
# Add clients with: wonders clients add NAME.pub --allow HOST ...
# After editing, reload a running forwarder with SIGHUP (or restart it).

allow = []      # patterns for every client, e.g. ["pypi.org", "files.pythonhosted.org"]
deny = []       # for every client; deny beats allow

[defaults]
rate_per_minute = 600
egress_bytes_per_day = "1 GiB"
max_response_bytes = "10 GiB"   # a longer body ends with an error, never looks complete
"""


def _write_new(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; keep it, or pass --force to replace it")
    _replace(path, text)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, keeping the file's mode if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                     prefix=f".{path.name}.", encoding="utf-8") as out:
        out.write(text)
    os.chmod(out.name, mode)
    os.replace(out.name, path)


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _free(paths: list[Path], force: bool) -> None:
    """Refuse before writing anything if a file to be written exists (without --force)."""
    taken = [str(p) for p in paths if p.exists()]
    if taken and not force:
        raise ConfigError(f"{', '.join(taken)} already exist(s); nothing was written "
                          "(pass --force to replace them; a replaced key makes the old one "
                          "useless)")


def _keys(name: str, directory: Path, force: bool) -> PrivateKey:
    key = PrivateKey.generate(name)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        write_key_files(key, directory, force=force)
    except KeyFileError as exc:
        exc.exit_code = 2
        raise
    return key


@click.group()
def init() -> None:
    """Set up a GPU node (client) or a forwarder: keys and a config file."""


_GROUP_OPTION = click.option(
    "--group", help="For a directory mailbox shared by several users: the group that owns it "
                    "(every user of the mailbox must be in it). The directory is made setgid "
                    "2770 so everything made inside belongs to the group.")


def _mailbox_dir(mailbox: str, group: str | None) -> list[str]:
    """Prepare a ``file://`` mailbox: make it if missing, give it to ``group`` (setgid,
    2770, its top-level directories too), refuse one every user may write. Returns what
    was done, to print; nothing for an S3 mailbox."""
    from wonders.mailbox import DIR_MODE, TOP_DIRS

    if urlsplit(mailbox).scheme != "file":
        if group:
            raise click.BadParameter("only a directory (file://) mailbox has a group",
                                     param_hint="--group")
        return []
    root = Path(unquote(urlsplit(mailbox).path))
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise click.BadParameter(f"no group {group!r} on this host (groupadd {group})",
                                     param_hint="--group") from None
    done: list[str] = []
    if not root.exists():
        root.mkdir(parents=True, mode=0o700)
        done.append(f"made {root}")
    if gid < 0:
        mode = root.stat().st_mode
        if mode & stat.S_IWOTH:
            raise ConfigError(f"mailbox {root} is writable by every user (mode "
                              f"{stat.S_IMODE(mode):04o}); anyone could plant links and files "
                              f"in it: run chmod o-rwx {root} (and --group GROUP to share it)")
        if not done:
            return []
        os.chmod(root, 0o700)
        return [*done, "mode 0700: for this user alone; to share it with other users, run "
                       "again with --group GROUP"]
    try:
        for path in (root, *(root / name for name in TOP_DIRS)):
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, -1, gid)
            os.chmod(path, DIR_MODE)
    except PermissionError as exc:
        raise ConfigError(
            f"cannot give {exc.filename or root} to group {group}: {exc.strerror}; as its "
            f"owner (or root) run: chgrp -R {group} {root} && chmod -R g+rwX,o-rwx {root} && "
            f"find {root} -type d -exec chmod g+s {{}} +") from None
    return [
        *done,
        f"{root} and its {', '.join(TOP_DIRS)} directories: group {group}, mode 2770 (setgid: "
        f"what is made inside belongs to {group}; objects are 0640, audit objects 0600)",
        f"every user of the mailbox (the forwarder's, each GPU node's job users) must be in "
        f"group {group}: usermod -aG {group} USER",
        f"if the mailbox already holds files made by other users, run as root: chgrp -R "
        f"{group} {root} && chmod -R g+rwX,o-rwx {root} && find {root} -type d -exec chmod "
        f"g+s {{}} +",
    ]


@init.command("client")
@click.option("--name", required=True, help="This node's client name, e.g. gpu01.")
@click.option("--mailbox", required=True, help="s3://BUCKET/PREFIX or file:///SHARED/DIR.")
@click.option("--endpoint", help="S3 endpoint URL (MinIO and others).")
@click.option("--forwarder", "forwarder_pub", type=click.Path(path_type=Path, dir_okay=False),
              help="The forwarder's public bundle, if you have it already (copied here).")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              default=Path.home() / ".config" / "wonders", show_default=True,
              help="Where to write the key pair and client.toml.")
@click.option("--force", is_flag=True, help="Replace existing files.")
@_GROUP_OPTION
def init_client(name: str, mailbox: str, endpoint: str | None, forwarder_pub: Path | None,
                directory: Path, force: bool, group: str | None) -> None:
    """Write NAME.key, NAME.pub and client.toml for a GPU node; print the public bundle
    and the next steps."""
    _check_name(name)
    _check_mailbox(mailbox, endpoint)
    pinned = directory / "forwarder.pub"
    config = directory / "client.toml"
    _free([directory / f"{name}.key", directory / f"{name}.pub", config]
          + ([pinned] if forwarder_pub is not None else []), force)
    prepared = _mailbox_dir(mailbox, group)
    if forwarder_pub is not None:
        bundle = load_public_bundle(forwarder_pub)
        _write_new(pinned, bundle.to_json().decode(), force)
    key = _keys(name, directory, force)
    lines = [f"key = {_toml_string(f'{name}.key')}",
             'forwarder = "forwarder.pub"             # the forwarder\'s bundle, pinned',
             f"mailbox = {_toml_string(mailbox)}"]
    if endpoint:
        lines.append(f"endpoint = {_toml_string(endpoint)}")
    _write_new(config, "\n".join(lines) + "\n", force)
    click.echo(f"wrote {directory / (name + '.key')} (private: it stays on this node), "
               f"{directory / (name + '.pub')} and {config}")
    for line in prepared:
        click.echo(f"mailbox: {line}")
    click.echo(f"key id {key.kid}; public bundle:")
    click.echo(key.public.to_json().decode().rstrip())
    click.echo("next:")
    click.echo(f"  1. on the forwarder host: wonders clients add {name}.pub --allow HOST ...")
    if forwarder_pub is None:
        click.echo(f"  2. copy the forwarder's public bundle here as {pinned}")
    found_anyway = config == Path.home() / ".config" / "wonders" / "client.toml"
    ping = "wonders ping" if found_anyway else f"wonders ping --config {config}"
    click.echo(f"  {3 if forwarder_pub is None else 2}. check the relay: {ping}")


@init.command("forwarder")
@click.option("--name", required=True, help="The forwarder's name (its key and id), e.g. fw1.")
@click.option("--mailbox", required=True, help="s3://BUCKET/PREFIX or file:///SHARED/DIR.")
@click.option("--endpoint", help="S3 endpoint URL (MinIO and others).")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              default=Path("."), show_default=True,
              help="Where to write the key pair, forwarder.toml and policy.toml.")
@click.option("--force", is_flag=True, help="Replace existing files (never policy.toml).")
@_GROUP_OPTION
def init_forwarder(name: str, mailbox: str, endpoint: str | None, directory: Path,
                   force: bool, group: str | None) -> None:
    """Write NAME.key, NAME.pub, forwarder.toml and (if missing) an empty deny-by-default
    policy.toml; print the public bundle and the next steps."""
    _check_name(name)
    _check_mailbox(mailbox, endpoint)
    config = directory / "forwarder.toml"
    _free([directory / f"{name}.key", directory / f"{name}.pub", config], force)
    prepared = _mailbox_dir(mailbox, group)
    key = _keys(name, directory, force)
    lines = [f"id = {_toml_string(name)}", f"key = {_toml_string(f'{name}.key')}",
             'policy = "policy.toml"', f"mailbox = {_toml_string(mailbox)}"]
    if endpoint:
        lines.append(f"endpoint = {_toml_string(endpoint)}")
    _write_new(config, "\n".join(lines) + "\n", force)
    policy = directory / "policy.toml"
    if not policy.exists():
        _replace(policy, _POLICY_SKELETON.format(name=name))
    click.echo(f"wrote {directory / (name + '.key')} (private: it stays on this host), "
               f"{directory / (name + '.pub')}, {config} and {policy}")
    for line in prepared:
        click.echo(f"mailbox: {line}")
    click.echo(f"key id {key.kid}; public bundle:")
    click.echo(key.public.to_json().decode().rstrip())
    click.echo("next:")
    click.echo(f"  1. give {name}.pub to every GPU node (as ~/.config/wonders/forwarder.pub)")
    click.echo(f"  2. add each node: wonders clients add --policy {policy} gpu01.pub "
               "--allow HOST ...")
    click.echo(f"  3. run: wonders forward --config {config}")


def _check_name(name: str) -> None:
    try:
        check_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None


def _check_mailbox(mailbox: str, endpoint: str | None) -> None:
    from wonders.mailbox import open_store

    open_store(mailbox, endpoint_url=endpoint)  # validates the URL; connects only on use


# ---------------------------------------------------------------------------- clients


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]*?)\s*\]\]?\s*(?:#.*)?$")


def _table_name(line: str) -> list[str] | None:
    """The dotted key of a ``[table]`` header line, unquoted; None for other lines."""
    match = _HEADER.match(line)
    if match is None:
        return None
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', match.group(1))
    return [a or b or c for a, b, c in parts]


def _load(policy_file: Path) -> tuple[str, Policy]:
    try:
        text = policy_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{policy_file}: no such policy file (wonders init forwarder "
                          "writes one)") from None
    return text, parse_policy(text, source=str(policy_file), base=policy_file.parent)


def _check(text: str, policy_file: Path) -> Policy:
    """Validate the edited text as the policy file it will become."""
    try:
        return parse_policy(text, source=str(policy_file), base=policy_file.parent)
    except PolicyError as exc:
        raise PolicyError(f"the edit would make the policy invalid, so nothing was written: "
                          f"{exc}") from None


_POLICY_OPTION = click.option(
    "--policy", "policy_file", type=click.Path(path_type=Path, dir_okay=False),
    default=Path("policy.toml"), show_default=True, help="The policy file to edit.")


@click.group()
def clients() -> None:
    """Add, list and remove the clients in a policy file."""


@clients.command("add")
@click.argument("bundle_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--allow", "allow", multiple=True,
              help="A host pattern, address or CIDR this client may reach (repeatable).")
@click.option("--port", "ports", multiple=True, type=click.IntRange(1, 65535),
              help="A destination port (repeatable; default 80 and 443).")
@click.option("--allow-private", "private", multiple=True,
              help="A private network (CIDR) the address guard lets this client reach, "
                   "e.g. an internal mirror (repeatable).")
@_POLICY_OPTION
def clients_add(bundle_file: Path, allow: tuple[str, ...], ports: tuple[int, ...],
                private: tuple[str, ...], policy_file: Path) -> None:
    """Add a client from its public bundle (NAME.pub), with its allow rules.

    The bundle is copied next to the policy file (as NAME.pub) unless it is there already;
    a [clients.NAME] table is appended; the rest of the file is kept as it is. The result
    is validated before anything is written. A running forwarder picks it up on SIGHUP.
    """
    try:
        bundle = load_public_bundle(bundle_file)
    except KeyFileError as exc:
        exc.exit_code = 2
        raise
    text, current = _load(policy_file)
    name = bundle.name
    if name in current.clients:
        raise ConfigError(f"{policy_file}: client {name!r} is already there; "
                          f"'wonders clients remove {name}' first to replace it")
    copy = policy_file.parent / f"{name}.pub"
    new_bundle = bundle.to_json().decode()
    if copy.exists() and parse_public_bundle(copy.read_bytes(), str(copy)).kid != bundle.kid:
        raise ConfigError(f"{copy} exists and holds another key of {name!r}; move it away "
                          "or remove the old client first")
    entry = (f"\n[clients.{_toml_key(name)}]\nbundle = {_toml_string(copy.name)}\n"
             f"allow = [{', '.join(_toml_string(a) for a in allow)}]\n")
    if ports:
        entry += f"ports = [{', '.join(str(p) for p in ports)}]\n"
    if private:
        entry += f"allow_private = [{', '.join(_toml_string(n) for n in private)}]\n"
    edited = text + ("" if text.endswith("\n") or not text else "\n") + entry
    if not copy.exists():
        _replace(copy, new_bundle)
        wrote_copy = True
    else:
        wrote_copy = False
    try:
        checked = _check(edited, policy_file)
    except PolicyError:
        if wrote_copy:
            copy.unlink()
        raise
    _replace(policy_file, edited)
    rules = ", ".join(e.text for e in checked.clients[name].allow) or "nothing yet"
    click.echo(f"added client {name} ({bundle.kid}) to {policy_file}; allowed: {rules}")
    click.echo("reload a running forwarder: kill -HUP <its pid> (or restart it)")


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml_string(name)


@clients.command("list")
@_POLICY_OPTION
def clients_list(policy_file: Path) -> None:
    """List the clients of a policy file: name, key id, mode, allow rules."""
    _, policy = _load(policy_file)
    if not policy.clients:
        click.echo(f"{policy_file}: no clients (add one with 'wonders clients add NAME.pub')")
        return
    rows = [("NAME", "KEY ID", "MODE", "ALLOW")]
    for name, entry in policy.clients.items():
        rows.append((name, entry.bundle.kid, entry.mode,
                     " ".join(e.text for e in entry.allow) or "-"))
    click.echo(table(rows))


@clients.command("remove")
@click.argument("name")
@_POLICY_OPTION
def clients_remove(name: str, policy_file: Path) -> None:
    """Remove a client's [clients.NAME] table (and its sub-tables) from the policy file.

    Everything else in the file stays. The client's bundle file is left in place.
    """
    text, current = _load(policy_file)
    if name not in current.clients:
        known = ", ".join(current.clients) or "none"
        raise ConfigError(f"{policy_file}: no client {name!r} (clients: {known})")
    kept: list[str] = []
    inside = False
    found = False
    for line in text.splitlines(keepends=True):
        table = _table_name(line)
        if table is not None:
            inside = table[:2] == ["clients", name]
            found |= inside
        if not inside:
            kept.append(line)
    if not found:
        raise ConfigError(f"{policy_file}: client {name!r} is not written as a "
                          f"[clients.{name}] table; remove it by hand")
    edited = "".join(kept)
    checked = _check(edited, policy_file)
    if name in checked.clients:
        raise ConfigError(f"{policy_file}: client {name!r} is also defined outside its "
                          f"[clients.{name}] table; remove it by hand")
    _replace(policy_file, edited)
    click.echo(f"removed client {name} from {policy_file} (its bundle file stays); "
               "reload a running forwarder: kill -HUP <its pid>")
