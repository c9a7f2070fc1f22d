"""``wonder-run --isolate``: the command runs in network and mount namespaces of its own,
where the only thing it can reach is the proxy.

No root and no setuid helper: an unprivileged user namespace owns a new network namespace
and a new mount namespace (what ``unshare --user --net --mount`` does).

- **Network.** Inside, loopback is up and nothing else exists, so every direct connection
  fails and name lookups fail at once. The proxy stays outside (it must reach the
  mailbox); the bridge between the two is a TCP socket listening on the namespace's own
  loopback, made *inside* and handed out over a Unix socket pair (``SCM_RIGHTS``):
  wonder-run accepts the command's connections on it and pipes each to the proxy.
- **Unix sockets that are files.** A network namespace does not isolate those (a tmux
  server in /tmp, ``systemd --user`` and D-Bus in ``$XDG_RUNTIME_DIR``, /run/docker.sock),
  and a service behind one can connect out for its caller. In the mount namespace (made
  private, so nothing propagates in or out) fresh directories cover where services keep
  them (:data:`HIDDEN`): /tmp and /var/tmp become private directories of this run (on
  the same disk as before), /run, /dev/shm and ``$XDG_RUNTIME_DIR`` fresh tmpfs. What the
  command needs from there comes back at the same path (wonder-run's trust bundle and
  wgetrc, a working directory under /tmp); a socket file elsewhere that is named in the
  environment or kept in a well-known place in ``$HOME`` is covered by an empty file; the
  variables that name sockets are not passed in (:func:`plan`). Outside processes'
  ``/proc/PID/root`` stays closed: the command is in a nested user namespace, and the
  kernel's ptrace check refuses it any view of a process outside.
- **Privileges.** The command runs as the user's own uid with no capabilities: a second,
  nested user namespace maps that uid back, and ``execve`` as a non-zero uid clears every
  capability (it cannot bring the network back up, nor unmount what covers the sockets:
  mounts made in a more privileged namespace are locked together).

The inside runs in a fresh interpreter (started by :func:`spawn`): ``unshare`` must be
called from a single-threaded process. If user, network or mount namespaces are not
available, or a mount fails, it exits with :data:`UNAVAILABLE` after writing one line that
says why; the command is never run with less isolation than this.
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
import signal
import socket
import stat
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from wonders.errors import WondersError

__all__ = ["HIDDEN", "SOCKET_VARIABLES", "UNAVAILABLE", "Bind", "Fresh", "IsolationRefused",
           "IsolationUnavailable", "MakeDirectory", "Plan", "plan", "serve_inside", "spawn"]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000
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
MOUNT_HINT = ("an administrator can enable them: sysctl -w user.max_mnt_namespaces=15000; in "
              "a container, allow the unshare and mount system calls (seccomp) or run "
              "without --isolate")

#: Where the node's services keep their sockets, what covers each inside, and its mode:
#: ``private``, a directory of this run's own (on the disk /tmp is on: a job may write
#: much there); ``tmpfs``, a fresh one (these are memory outside too). /var/run is /run on
#: current systems; a real /var/run would need its own entry.
HIDDEN: tuple[tuple[str, str, int], ...] = (  # covered inside, never written here
    ("/tmp", "private", 0o1777), ("/var/tmp", "private", 0o1777),  # noqa: S108
    ("/run", "tmpfs", 0o755), ("/dev/shm", "tmpfs", 0o1777))  # noqa: S108
#: Variables that name a socket outside, or a session behind one: not passed in.
SOCKET_VARIABLES = ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "GPG_AGENT_INFO",
                    "DBUS_SESSION_BUS_ADDRESS", "DBUS_SYSTEM_BUS_ADDRESS", "TMUX",
                    "TMUX_PANE", "STY", "NOTIFY_SOCKET", "WAYLAND_DISPLAY", "DISPLAY",
                    "VSCODE_IPC_HOOK_CLI", "VSCODE_GIT_IPC_HANDLE")
#: Variables that name a socket when they are a ``unix:`` URL (a network address is
#: unreachable inside anyway, and kept).
UNIX_URL_VARIABLES = ("DOCKER_HOST", "CONTAINER_HOST")
#: Directories in $HOME (which stays: a job needs its files) where services keep sockets
#: (ssh ControlMaster, gpg-agent, screen, rootless Docker, tmux): each socket file in
#: them, or one level down, is covered with an empty file.
HOME_SOCKET_DIRS = (".ssh", ".gnupg", ".screen", ".docker", ".tmux")


class IsolationUnavailable(WondersError):
    """The namespaces cannot be made here, or a mount failed (the helper has said why)."""


class IsolationRefused(WondersError):
    """This run cannot be isolated as asked (the message says why and what to do)."""


# ------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Bind:
    """Mount ``source`` on ``target``. ``source`` is opened before anything is covered
    (it may be under a hidden directory); with ``make``, a mountpoint like it (a file or a
    directory, with any missing parents) is made first in the fresh tree."""

    source: str
    target: str
    make: bool = False


@dataclass(frozen=True, slots=True)
class Fresh:
    """A fresh, empty tmpfs on ``target``."""

    target: str
    mode: int


@dataclass(frozen=True, slots=True)
class MakeDirectory:
    """An empty directory at ``path`` (and its parents) in a fresh tree."""

    path: str
    mode: int


Mount = Bind | Fresh | MakeDirectory


@dataclass(frozen=True, slots=True)
class Plan:
    """What the helper does in the mount namespace, in order, and what the command gets."""

    mounts: tuple[Mount, ...]
    env: dict[str, str]
    cwd: str


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _named_sockets(env: Mapping[str, str]) -> list[str]:
    """The socket paths the variables that are not passed in name (to cover the files
    too: one in $HOME stays reachable otherwise)."""
    found = []
    for name in (*SOCKET_VARIABLES, *UNIX_URL_VARIABLES):
        value = env.get(name, "")
        if name.startswith("DBUS_"):  # unix:path=/run/user/1000/bus;unix:abstract=...
            found += [part.split("=", 1)[1] for address in value.split(";")
                      for part in address.partition(":")[2].split(",")
                      if part.startswith("path=")]
        elif name in UNIX_URL_VARIABLES:
            if value.startswith("unix://"):
                found.append(value.removeprefix("unix://"))
        elif name == "TMUX":  # socket,pid,session
            found.append(value.split(",")[0])
        elif value.startswith("/"):
            found.append(value)
    return found


def _sockets_in(directory: str, depth: int) -> list[str]:
    found = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError:
            continue
        if stat.S_ISSOCK(mode):
            found.append(entry.path)
        elif stat.S_ISDIR(mode) and depth > 1:
            found += _sockets_in(entry.path, depth - 1)
    return found


@dataclass(frozen=True, slots=True)
class _Top:
    path: str  # real path
    how: str  # "private" or "tmpfs"
    mode: int


def plan(env: Mapping[str, str], cwd: str, *, uid: int, private: str, covered: str,
         keep: Sequence[str] = (), home: str | None = None,
         hidden: Sequence[tuple[str, str, int]] = HIDDEN, runtime: str | None = None) -> Plan:
    """The mounts that hide the node's socket files from the command, and its environment.

    ``private`` holds this run's directories for the ``private`` entries of ``hidden``
    (named by :func:`private_name`; :func:`spawn` makes them); ``covered`` is an empty
    file to put over a socket that stays in view; ``keep`` are files the command needs
    from under a hidden directory (wonder-run's trust bundle and wgetrc); ``home`` is
    where :data:`HOME_SOCKET_DIRS` are. ``runtime`` is where a fresh ``$XDG_RUNTIME_DIR``
    goes when none is given (default /run/user/UID). Raises :class:`IsolationRefused` if
    the working directory would vanish inside.
    """
    candidates = [_Top(os.path.realpath(root), how, mode) for root, how, mode in hidden]
    tops: list[_Top] = []  # that exist, none inside another
    for top in candidates:
        if os.path.isdir(top.path) and top.path not in (t.path for t in tops) and not any(
                _under(top.path, other.path) and top.path != other.path
                for other in candidates):
            tops.append(top)

    def top_of(path: str) -> _Top | None:
        return next((top for top in tops if _under(path, top.path)), None)

    inside = {name: value for name, value in env.items()
              if name not in (*SOCKET_VARIABLES, "XDG_RUNTIME_DIR")
              and not (name in UNIX_URL_VARIABLES and value.startswith("unix:"))}
    fresh: list[Mount] = []  # directories to make in the fresh trees
    # $XDG_RUNTIME_DIR: the same path, empty and 0700 (its own tmpfs if it is elsewhere)
    given = env.get("XDG_RUNTIME_DIR")
    xdg = given if given and os.path.isdir(given) else (runtime or f"/run/user/{uid}")
    real_xdg = os.path.realpath(xdg)
    if top_of(real_xdg) is not None:
        fresh.append(MakeDirectory(real_xdg, 0o700))
        inside["XDG_RUNTIME_DIR"] = xdg
    elif os.path.isdir(real_xdg):
        tops.append(_Top(real_xdg, "tmpfs", 0o700))
        inside["XDG_RUNTIME_DIR"] = xdg
    # $TMPDIR under a hidden directory: an empty private one at the same path
    tmpdir = env.get("TMPDIR")
    if tmpdir and os.path.isdir(tmpdir) and top_of(os.path.realpath(tmpdir)) is not None:
        fresh.append(MakeDirectory(os.path.realpath(tmpdir), 0o700))
    mounts: list[Mount] = [
        Bind(os.path.join(private, private_name(top.path)), top.path) if top.how == "private"
        else Fresh(top.path, top.mode) for top in tops]
    mounts += fresh
    # the working directory comes back if a job can have made it (below /tmp, /var/tmp),
    # with any socket directly in it covered
    cover = _named_sockets(env)
    for name in HOME_SOCKET_DIRS if home else ():
        cover += _sockets_in(os.path.join(home or "", name), 2)
    real_cwd = os.path.realpath(cwd)
    where = top_of(real_cwd)
    if where is not None:
        if where.how != "private" or real_cwd == where.path:
            names = ", ".join(root for root, _, _ in hidden)
            raise IsolationRefused(
                f"the working directory {cwd} would be hidden inside (--isolate puts "
                f"fresh, empty directories over {names} and $XDG_RUNTIME_DIR); run from "
                "another directory")
        mounts.append(Bind(real_cwd, real_cwd, make=True))
        cover += _sockets_in(real_cwd, 1)
    for path in keep:
        real = os.path.realpath(path)
        if top_of(real) is not None:
            mounts.append(Bind(real, real, make=True))
    covering: list[str] = []
    for path in cover:
        real = os.path.realpath(path)
        in_view = top_of(real) is None or (where is not None and _under(real, real_cwd))
        if real not in covering and in_view and _is_socket(real):
            covering.append(real)
    mounts += [Bind(covered, path) for path in covering]
    return Plan(tuple(mounts), inside, cwd)


def private_name(root: str) -> str:
    """The name of the run's own directory that stands for ``root`` inside."""
    return root.strip("/").replace("/", "-")


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


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def c(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    _check(_libc().mount(c(source), c(target), c(fstype), ctypes.c_ulong(flags), c(data)))


def _make_mountpoint(target: str, like: int) -> None:
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    if stat.S_ISDIR(os.fstat(like).st_mode):
        os.makedirs(target, mode=0o700, exist_ok=True)
    else:
        os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _apply(mounts: Sequence[Mount], sources: dict[str, int]) -> None:
    """In the new mount namespace, as its root: nothing propagates in or out, then the
    plan, in order. Each bind's source is opened (into ``sources``) before anything is
    covered, in this namespace (a mount of another one cannot be bound). An OSError
    names the path that failed."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for mount in mounts:
        if isinstance(mount, Bind) and mount.source not in sources:
            try:
                sources[mount.source] = os.open(mount.source, os.O_PATH | os.O_CLOEXEC)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, mount.source) from None
    for mount in mounts:
        where = mount.path if isinstance(mount, MakeDirectory) else mount.target
        try:
            if isinstance(mount, Fresh):
                _mount("tmpfs", mount.target, "tmpfs", MS_NOSUID | MS_NODEV,
                       f"mode={mount.mode:o}")
            elif isinstance(mount, MakeDirectory):
                os.makedirs(mount.path, mode=mount.mode, exist_ok=True)
                os.chmod(mount.path, mount.mode)
            else:
                fd = sources[mount.source]
                if mount.make:
                    _make_mountpoint(mount.target, fd)
                elif not os.path.lexists(mount.target):
                    continue  # gone since the plan (an ssh ControlMaster that ended)
                _mount(f"/proc/self/fd/{fd}", mount.target, None, MS_BIND | MS_REC)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, exc.filename or where) from None


def _fail(line: str) -> NoReturn:
    sys.stderr.write(f"wonder-run: --isolate: {line}\n")
    os._exit(UNAVAILABLE)


def serve_inside(channel: int, port: int, command: Sequence[str], env: dict[str, str],
                 mounts: Sequence[Mount] = (), cwd: str | None = None) -> None:
    """In the helper: enter the namespaces, cover the socket files (``mounts``, from
    :func:`plan`), hand the listening socket out over ``channel``, drop to the user's own
    ids and exec ``command`` in ``cwd``. Never returns."""
    uid, gid = os.getuid(), os.getgid()
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        _map_ids(0, uid, 0, gid)  # root of the new namespaces only: it can set up lo
        _loopback_up()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "user.max_user_namespaces is 0"
        _fail(f"cannot make a user and network namespace ({reason}); {HINT}")
    try:
        _unshare(CLONE_NEWNS)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "user.max_mnt_namespaces is 0"
        _fail(f"cannot make a mount namespace ({reason}), without which Unix sockets that "
              f"are files (/tmp, /run, $XDG_RUNTIME_DIR) stay reachable; {MOUNT_HINT}")
    sources: dict[str, int] = {}
    try:
        _apply(mounts, sources)
        os.chdir(cwd or os.getcwd())  # through the new mounts, not the old directory
    except OSError as exc:
        _fail(f"cannot cover the socket files ({exc.filename or '/'}: {exc.strerror}); "
              "the command does not run without")
    for fd in sources.values():
        os.close(fd)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    # the command's own uid, no capabilities: a nested namespace maps it to our root,
    # and execve as a non-zero uid drops every capability
    try:
        _unshare(CLONE_NEWUSER)
        _map_ids(uid, 0, gid, 0)
        _drop_capabilities()
    except OSError as exc:
        _fail(f"cannot drop to uid {uid}: {exc}")
    with socket.socket(fileno=channel) as out:
        socket.send_fds(out, [b"listening"], [listener.fileno()])
    listener.close()
    # Python ignores these two; the command starts with the dispositions it had outside
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    try:
        os.execvpe(command[0], list(command), env)  # noqa: S606 (the user's own command)
    except FileNotFoundError:
        sys.stderr.write(f"wonder-run: cannot run {command[0]!r}: no such command or file\n")
        os._exit(127)
    except PermissionError:
        sys.stderr.write(f"wonder-run: cannot run {command[0]!r}: permission denied\n")
        os._exit(126)


def _encode(mount: Mount) -> list[object]:
    if isinstance(mount, Bind):
        return ["bind", mount.source, mount.target, mount.make]
    if isinstance(mount, Fresh):
        return ["tmpfs", mount.target, mount.mode]
    return ["mkdir", mount.path, mount.mode]


def _decode(item: list[Any]) -> Mount:
    kind, *args = item
    if kind == "bind":
        return Bind(str(args[0]), str(args[1]), bool(args[2]))
    if kind == "tmpfs":
        return Fresh(str(args[0]), int(args[1]))
    return MakeDirectory(str(args[0]), int(args[1]))


async def spawn(command: Sequence[str], env: dict[str, str], port: int, *, work: Path,
                keep: Sequence[Path] = (),
                ) -> tuple[asyncio.subprocess.Process, socket.socket | None]:
    """Start the helper running ``command`` isolated; returns it and the listening socket
    it made inside its namespace (None if it exited first: its status says why).

    ``work`` is the run's private directory (it holds what stands for /tmp and /var/tmp
    inside); ``keep`` are files under it the command reads (the trust bundle, the wgetrc).
    Raises :class:`IsolationRefused` if the working directory would vanish inside."""
    layout = _prepare(env, work, keep)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    spec = json.dumps({"channel": theirs.fileno(), "port": port, "command": list(command),
                       "mounts": [_encode(mount) for mount in layout.mounts],
                       "cwd": layout.cwd})
    # the environment (which holds the proxy secret) goes to the helper as its own
    # environment, never in its arguments. -I: the command's PYTHON* variables do not
    # steer the helper; it imports this very package, wherever it was found.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-c", HELPER, str(Path(__file__).parents[2]), spec,
        env=layout.env, pass_fds=(theirs.fileno(),))
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


def _prepare(env: Mapping[str, str], work: Path, keep: Sequence[Path]) -> Plan:
    """The plan for this run, and what it binds from ``work``: the directories that stand
    for /tmp and /var/tmp inside, and the empty file that covers sockets in view."""
    private, covered = work / "inside", work / "covered"
    private.mkdir(mode=0o700, exist_ok=True)
    covered.touch(mode=0o400)
    for root, how, mode in HIDDEN:
        if how == "private":
            stands_for = private / private_name(os.path.realpath(root))
            stands_for.mkdir(exist_ok=True)
            stands_for.chmod(mode)
    return plan(env, os.getcwd(), uid=os.getuid(), private=str(private),
                covered=str(covered), keep=[str(path) for path in keep],
                home=env.get("HOME") or str(Path.home()))


HELPER = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
          "from wonders.proxy.isolate import main; main()")


def main() -> None:
    """The helper's entry point: ``sys.argv[1]`` is the spec :func:`spawn` wrote."""
    spec = json.loads(sys.argv[1])
    serve_inside(spec["channel"], spec["port"], spec["command"], dict(os.environ),
                 [_decode(item) for item in spec["mounts"]], spec["cwd"])


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
    main()
