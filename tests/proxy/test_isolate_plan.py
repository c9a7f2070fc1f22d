"""``isolate.plan``: what covers the node's socket files inside, and the command's
environment. Pure (it reads the filesystem, mounts nothing): run over a tree in tmp_path
that stands for /tmp, /var/tmp, /run, /dev/shm and $HOME."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from wonders.proxy.isolate import (
    SOCKET_VARIABLES,
    Bind,
    Fresh,
    IsolationRefused,
    MakeDirectory,
    Plan,
    plan,
    private_name,
)


@dataclass
class Node:
    """A node's filesystem in miniature."""

    base: Path

    def __post_init__(self) -> None:
        for sub in ("tmp", "var/tmp", "run/user/1000", "dev/shm", "home/.ssh/cm",
                    "home/.gnupg", "home/job", "work/inside", "elsewhere"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "work" / "covered").touch()

    def path(self, sub: str) -> str:
        return str(self.base / sub)

    @property
    def hidden(self) -> tuple[tuple[str, str, int], ...]:
        return ((self.path("tmp"), "private", 0o1777), (self.path("var/tmp"), "private", 0o1777),
                (self.path("run"), "tmpfs", 0o755), (self.path("dev/shm"), "tmpfs", 0o1777))

    def socket(self, sub: str) -> str:
        path = self.base / sub
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(path, stat.S_IFSOCK | 0o600)
        return str(path)

    def plan(self, env: dict[str, str] | None = None, cwd: str = "home/job",
             keep: tuple[str, ...] = (), **kwargs: object) -> Plan:
        arguments: dict[str, object] = dict(
            uid=1000, private=self.path("work/inside"), covered=self.path("work/covered"),
            keep=[self.path(k) for k in keep], home=self.path("home"), hidden=self.hidden,
            runtime=self.path("run/user/1000"))
        arguments.update(kwargs)
        return plan(env or {}, self.path(cwd), **arguments)  # type: ignore[arg-type]

    def private(self, sub: str) -> str:
        return os.path.join(self.path("work/inside"), private_name(self.path(sub)))


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path.resolve())


def test_each_hidden_directory_is_covered_once(node: Node) -> None:
    (node.base / "var" / "run").symlink_to(node.base / "run")  # /var/run -> /run
    hidden = (*node.hidden, (node.path("var/run"), "tmpfs", 0o755),  # the same, twice
              (node.path("run/user"), "tmpfs", 0o755),  # inside another
              (node.path("absent"), "tmpfs", 0o755))  # not on this node
    layout = node.plan(hidden=hidden)
    assert layout.mounts == (
        Bind(node.private("tmp"), node.path("tmp")),
        Bind(node.private("var/tmp"), node.path("var/tmp")),
        Fresh(node.path("run"), 0o755), Fresh(node.path("dev/shm"), 0o1777),
        MakeDirectory(node.path("run/user/1000"), 0o700))
    assert layout.cwd == node.path("home/job")


@pytest.mark.parametrize(("given", "expected"), [
    pytest.param("run/user/1000", "under-run", id="in-run-user"),
    pytest.param("elsewhere", "own-tmpfs", id="elsewhere"),
    pytest.param(None, "default", id="not-set"),
    pytest.param("no/such/dir", "default", id="missing"),
])
def test_the_runtime_dir_is_fresh_and_private_at_its_own_path(
    node: Node, given: str | None, expected: str
) -> None:
    env = {"XDG_RUNTIME_DIR": node.path(given)} if given else {}
    layout = node.plan(env)
    if expected == "own-tmpfs":
        assert Fresh(node.path("elsewhere"), 0o700) in layout.mounts
        assert layout.env["XDG_RUNTIME_DIR"] == node.path("elsewhere")
    else:
        assert MakeDirectory(node.path("run/user/1000"), 0o700) in layout.mounts
        assert layout.env["XDG_RUNTIME_DIR"] == node.path("run/user/1000")


def test_no_runtime_dir_where_there_is_no_run(node: Node) -> None:
    layout = node.plan(runtime=node.path("absent/user/1000"))
    assert "XDG_RUNTIME_DIR" not in layout.env
    assert not [m for m in layout.mounts if isinstance(m, MakeDirectory)]


@pytest.mark.parametrize(("tmpdir", "made"), [
    pytest.param("tmp/job-42", True, id="under-tmp"),
    pytest.param("elsewhere", False, id="elsewhere-stays"),
    pytest.param("tmp/absent", False, id="missing"),
])
def test_a_tmpdir_under_a_hidden_directory_is_made_empty(
    node: Node, tmpdir: str, made: bool
) -> None:
    (node.base / "tmp" / "job-42").mkdir()
    layout = node.plan({"TMPDIR": node.path(tmpdir)})
    assert (MakeDirectory(node.path(tmpdir), 0o700) in layout.mounts) is made
    assert layout.env["TMPDIR"] == node.path(tmpdir)


def test_a_working_directory_below_tmp_comes_back_with_its_sockets_covered(node: Node) -> None:
    (node.base / "tmp" / "job" / "deeper").mkdir(parents=True)
    service = node.socket("tmp/job/service.sock")
    node.socket("tmp/job/deeper/other.sock")  # one level down: not looked for
    layout = node.plan(cwd="tmp/job")
    assert layout.mounts[-2:] == (Bind(node.path("tmp/job"), node.path("tmp/job"), make=True),
                                  Bind(node.path("work/covered"), service))


@pytest.mark.parametrize("cwd", [
    pytest.param("tmp", id="tmp-itself"),
    pytest.param("var/tmp", id="var-tmp-itself"),
    pytest.param("run/user/1000", id="under-run"),
    pytest.param("dev/shm", id="dev-shm"),
])
def test_a_working_directory_that_would_vanish_is_refused(node: Node, cwd: str) -> None:
    with pytest.raises(IsolationRefused, match=r"would be hidden inside.*run from another"):
        node.plan(cwd=cwd)


def test_the_runtime_dir_elsewhere_as_working_directory_is_refused(node: Node) -> None:
    with pytest.raises(IsolationRefused, match="would be hidden inside"):
        node.plan({"XDG_RUNTIME_DIR": node.path("elsewhere")}, cwd="elsewhere")


def test_files_the_command_needs_from_under_tmp_come_back(node: Node) -> None:
    (node.base / "tmp" / "wonder-run-x").mkdir()
    for name in ("ca-bundle.pem", "wgetrc"):
        (node.base / "tmp" / "wonder-run-x" / name).write_text("")
    (node.base / "elsewhere" / "ca.pem").write_text("")
    layout = node.plan(keep=("tmp/wonder-run-x/ca-bundle.pem", "tmp/wonder-run-x/wgetrc",
                             "elsewhere/ca.pem"))
    binds = [m for m in layout.mounts if isinstance(m, Bind) and m.make]
    assert binds == [Bind(node.path(f"tmp/wonder-run-x/{name}"),
                          node.path(f"tmp/wonder-run-x/{name}"), make=True)
                     for name in ("ca-bundle.pem", "wgetrc")]


def test_socket_files_in_view_that_are_named_or_well_known_are_covered(node: Node) -> None:
    agent = node.socket("home/agent.sock")
    bus = node.socket("elsewhere/bus")
    docker = node.socket("home/.docker/run/docker.sock")
    control = node.socket("home/.ssh/cm/user@host:22")
    gpg = node.socket("home/.gnupg/S.gpg-agent")
    node.socket("home/.ssh/a/b/too-deep")
    node.socket("home/unknown.sock")  # not named, not in a well-known place: stays
    (node.base / "home" / ".ssh" / "config").write_text("")
    in_tmp = node.socket("tmp/tmux-1000/default")  # hidden already
    env = {"SSH_AUTH_SOCK": agent, "DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus},guid=1;"
           "unix:abstract=/x", "DOCKER_HOST": f"unix://{docker}", "TMUX": f"{in_tmp},1,0",
           "NOTIFY_SOCKET": "@abstract"}
    layout = node.plan(env)
    covered = {m.target for m in layout.mounts
               if isinstance(m, Bind) and m.source == node.path("work/covered")}
    assert covered == {agent, bus, docker, control, gpg}


@pytest.mark.parametrize(("name", "value", "kept"), [
    *[pytest.param(name, "/somewhere", False, id=name) for name in SOCKET_VARIABLES],
    pytest.param("DOCKER_HOST", "unix:///run/docker.sock", False, id="DOCKER_HOST-unix"),
    pytest.param("DOCKER_HOST", "tcp://10.0.0.1:2375", True, id="DOCKER_HOST-tcp"),
    pytest.param("CONTAINER_HOST", "unix:///run/user/1000/podman/podman.sock", False,
                 id="CONTAINER_HOST-unix"),
    pytest.param("HOME", "/home/u", True, id="HOME"),
    pytest.param("HTTPS_PROXY", "http://wonders:x@127.0.0.1:1", True, id="HTTPS_PROXY"),
])
def test_variables_that_name_sockets_are_not_passed_in(
    node: Node, name: str, value: str, kept: bool
) -> None:
    layout = node.plan({name: value})
    assert (layout.env.get(name) == value) is kept
