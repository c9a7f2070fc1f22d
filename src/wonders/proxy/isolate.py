"""``wonder-run --isolate``: the command runs in a network namespace of its own, where the
only thing it can reach is the proxy.

No root and no setuid helper: an unprivileged user namespace owns a new network namespace
(what ``unshare --user --net`` does). Inside, loopback is up and nothing else exists, so
every direct connection fails and name lookups fail at once. The proxy stays outside (it
must reach the mailbox); the bridge between the two is a listening socket made *inside*
and handed out over a Unix socket pair (``SCM_RIGHTS``): wonder-run accepts the command's
connections on it and pipes each to the proxy. Then the command runs as the user's own uid
with no capabilities: a second, nested user namespace maps that uid back, and ``execve``
as a non-zero uid clears every capability (it cannot even bring the network back up).

The inside runs in a fresh interpreter (``python -m wonders.proxy.isolate``, started by
:func:`spawn`): ``unshare`` must be called from a single-threaded process. If user
namespaces are not available it exits with :data:`UNAVAILABLE` after writing one line
that says why; the command is never run unisolated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import socket
import struct
import sys
from collections.abc import Sequence

from wonders.errors import WondersError

__all__ = ["UNAVAILABLE", "IsolationUnavailable", "serve_inside", "spawn"]

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 24, 28, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
#: SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, each with its lock
SECURE_NOROOT = 0b1111
#: The helper's exit status when user namespaces are unavailable (its stderr says why).
UNAVAILABLE = 97
HINT = ("an administrator can enable them: sysctl -w user.max_user_namespaces=15000 (and, "
        "on Debian/Ubuntu kernels, kernel.unprivileged_userns_clone=1 or "
        "kernel.apparmor_restrict_unprivileged_userns=0); in a container, allow the "
        "unshare and clone system calls (seccomp) or run without --isolate")


class IsolationUnavailable(WondersError):
    """User or network namespaces cannot be made here (the helper has said why)."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _unshare(flags: int) -> None:
    _check(_libc().unshare(flags))


def _drop_capabilities() -> None:
    """No capability survives the coming execve, whatever the uid (also uid 0, for a
    user who is root on the node): no new privileges, an empty bounding set, no ambient
    capabilities, and root's implicit capabilities switched off and locked."""
    libc = _libc()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
    last = int(open("/proc/sys/kernel/cap_last_cap").read())  # noqa: SIM115
    for cap in range(last + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))
    _check(libc.prctl(PR_SET_SECUREBITS, SECURE_NOROOT, 0, 0, 0))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _map_ids(inner_uid: int, outer_uid: int, inner_gid: int, outer_gid: int) -> None:
    """Map one uid and one gid of the user namespace this process just entered."""
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inner_uid} {outer_uid} 1\n")
    _write("/proc/self/gid_map", f"{inner_gid} {outer_gid} 1\n")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def serve_inside(channel: int, port: int, command: Sequence[str], env: dict[str, str]) -> None:
    """In the helper: enter the namespaces, hand the listening socket out over
    ``channel``, drop to the user's own ids and exec ``command``. Never returns."""
    uid, gid = os.getuid(), os.getgid()
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        _map_ids(0, uid, 0, gid)  # root of the new namespaces only: it can set up lo
        _loopback_up()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "user.max_user_namespaces is 0"
        sys.stderr.write(f"wonder-run: --isolate: cannot make a user and network namespace "
                         f"({reason}); {HINT}\n")
        os._exit(UNAVAILABLE)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    with socket.socket(fileno=channel) as out:
        socket.send_fds(out, [b"listening"], [listener.fileno()])
    listener.close()
    # the command's own uid, no capabilities: a nested namespace maps it to our root,
    # and execve as a non-zero uid drops every capability
    try:
        _unshare(CLONE_NEWUSER)
        _map_ids(uid, 0, gid, 0)
        _drop_capabilities()
    except OSError as exc:
        sys.stderr.write(f"wonder-run: --isolate: cannot drop to uid {uid}: {exc}\n")
        os._exit(UNAVAILABLE)
    try:
        os.execvpe(command[0], list(command), env)  # noqa: S606 (the user's own command)
    except FileNotFoundError:
        sys.stderr.write(f"wonder-run: cannot run {command[0]!r}: no such command or file\n")
        os._exit(127)
    except PermissionError:
        sys.stderr.write(f"wonder-run: cannot run {command[0]!r}: permission denied\n")
        os._exit(126)


async def spawn(command: Sequence[str], env: dict[str, str], port: int,
                ) -> tuple[asyncio.subprocess.Process, socket.socket | None]:
    """Start the helper running ``command`` isolated; returns it and the listening socket
    it made inside its namespace (None if it exited first: its status says why)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    spec = json.dumps({"channel": theirs.fileno(), "port": port, "command": list(command)})
    # the environment (which holds the proxy secret) goes to the helper as its own
    # environment, never in its arguments
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-m", "wonders.proxy.isolate", spec, env=env,
        pass_fds=(theirs.fileno(),))
    theirs.close()
    loop = asyncio.get_running_loop()
    ours.setblocking(False)
    try:
        received = await loop.run_in_executor(None, _receive_fd, ours)
    finally:
        ours.close()
    if received is None:
        return child, None
    return child, socket.socket(fileno=received)


def _receive_fd(channel: socket.socket) -> int | None:
    channel.setblocking(True)
    with contextlib.suppress(OSError):
        _, fds, _, _ = socket.recv_fds(channel, 64, 1)
        if fds:
            return fds[0]
    return None  # the helper ended without sending one


async def pipe_to_proxy(listener: socket.socket, port: int) -> None:
    """Accept the command's connections inside its namespace and pipe each to the proxy
    on this side's 127.0.0.1:``port``, until cancelled."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                dst.close()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()

    listener.setblocking(False)
    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    serve_inside(spec["channel"], spec["port"], spec["command"], dict(os.environ))
