"""No object in the mailbox can stop a forwarder (hardening item 4).

A client may write any object under its own request prefix, on S3 too, and a shared
mailbox directory may be writable by others. Before the fix, an object named
``requests/gpu01/x y`` made the forwarder delete it through a key check that raised,
killing the poll loop (and every restarted forwarder with it); odd names under an expired
request killed the janitor silently; and a background task that died left a half-working
forwarder running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import pytest

from tests.eventually import eventually
from tests.relay.harness import (
    FAST,
    Keys,
    Upstream,
    WrappedStore,
    client_for,
    make_keys,
    running_forwarder,
)
from tests.security._mailbox import exists_raw, odd_names, put_raw
from wonders.crypto import new_request_id
from wonders.mailbox import Store, layout
from wonders.relay.forwarder import Forwarder, ForwarderFailed


@pytest.fixture
def keys(tmp_path: Path, upstream: Upstream) -> Keys:
    return make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))


def _reported(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The odd names logged, by the forwarder (names that are keys but not this
    protocol's) or by a store as it lists (names that are not keys at all, and a directory
    nested too deep by its top): one line each."""
    return [str(r.args[0]) for r in caplog.records  # type: ignore[index]
            if r.msg == "odd object %r left in place: %s"]


async def _echo(store: Store, keys: Keys, upstream: Upstream) -> int:
    async with client_for(store, keys) as client, \
            await client.request("GET", f"{upstream.url}/echo", timeout=30) as response:
        await response.read()
        return response.status


async def test_odd_objects_leave_the_forwarder_serving(
    store: Store, keys: Keys, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "wonders")
    odd_id = new_request_id(time.time())
    before = odd_names(store, odd_id)
    for name in before:  # there when the forwarder (re)starts
        await put_raw(store, name)
    async with running_forwarder(store, keys, upstream) as forwarder:
        assert await _echo(store, keys, upstream) == 200
        later = [f"requests/gpu01/late {i}" for i in range(3)] + [
            "responses/gpu01/x y", f"responses/gpu01/{odd_id}/head/extra"]
        for name in later:  # and while it runs, also where the client lists
            await put_raw(store, name)
        assert await _echo(store, keys, upstream) == 200
        assert await _echo(store, keys, upstream) == 200
        assert forwarder.counters.rejected == 0
    assert upstream.hits["/echo"] == 3
    for name in before + later:  # nothing that is not the protocol's own is deleted
        assert await exists_raw(store, name), name
    reported = _reported(caplog)
    assert len(reported) == len(set(reported))  # each odd name is logged once
    for name in before:
        if not name.endswith("/"):  # an empty "directory" is no object
            assert any(name.startswith(r.removesuffix("...")) for r in reported), name


async def test_the_janitor_sweeps_past_odd_objects_and_keeps_running(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    settings = dataclasses.replace(FAST, janitor_interval=0.05, max_request_lifetime=600.0,
                                   skew=60.0, response_lifetime=60.0)
    old = new_request_id(time.time() - 10_000)  # long expired
    other = new_request_id(time.time() - 10_000)
    expired = [layout.claim_key(old, 0), layout.done_key(old),
               layout.head_key("requests", "gpu01", old),
               layout.body_key("requests", "gpu01", old, 0),
               layout.head_key("responses", "gpu01", old)]
    odd = [f"claims/{old}/x y", f"claims/{old}/junk", f"claims/{old}/00001",
           f"requests/gpu01/{old}/x y", f"requests/gpu01/{old}/junk",
           f"requests/gpu01/{other}/head/extra", f"responses/gpu01/{old}/x y",
           f"responses/gpu01/{old}/body/1", f"claims/{old}/\u0661\u0661\u0661\u0661"]
    for name in odd + expired:
        await put_raw(store, name)
    async with running_forwarder(store, keys, upstream, settings) as forwarder:
        async def swept() -> bool:  # the janitor runs every 50 ms
            return not any([await exists_raw(store, name) for name in expired])

        await eventually(swept, what=f"the janitor to remove {expired}")
        assert await _echo(store, keys, upstream) == 200
        assert await forwarder.sweep() == 0  # and again, over the odd names only
    for name in odd:
        assert await exists_raw(store, name), name


class _Failing(WrappedStore):
    """Raises an unexpected error (not a StoreError) for puts under ``prefix`` after the
    first ``spare`` of them."""

    def __init__(self, inner: Store, prefix: str, spare: int) -> None:
        super().__init__(inner)
        self.prefix, self.spare = prefix, spare

    def _on(self, action: str, key: str) -> None:
        if action == "s3:PutObject" and key.startswith(self.prefix):
            if self.spare <= 0:
                raise RuntimeError(f"boom writing {key}")
            self.spare -= 1


@pytest.mark.parametrize("task", ["janitor", "heartbeat", "audit writer"])
async def test_a_background_task_that_dies_stops_the_forwarder_loudly(
    store: Store, keys: Keys, upstream: Upstream, caplog: pytest.LogCaptureFixture, task: str
) -> None:
    caplog.set_level(logging.INFO, "wonders")
    settings = dataclasses.replace(FAST, janitor_interval=0.05, audit_interval=0.05)
    mailbox: Store = store
    if task == "heartbeat":
        mailbox = _Failing(store, layout.HEARTBEATS, spare=1)  # the first one is written
    elif task == "audit writer":
        mailbox = _Failing(store, layout.AUDIT, spare=0)
    forwarder = Forwarder(mailbox, keys.forwarder, keys.policy, settings,
                          upstream_ca=str(upstream.ca_file))
    if task == "janitor":
        async def sweep() -> int:
            raise RuntimeError("boom sweeping")
        forwarder.sweep = sweep  # type: ignore[method-assign]
    running = asyncio.create_task(forwarder.run())
    try:
        if task == "audit writer":  # a request makes a record to write
            await asyncio.wait_for(forwarder.ready.wait(), 30)
            with contextlib.suppress(Exception):  # the forwarder may stop before answering
                await _echo(store, keys, upstream)
        with pytest.raises(ForwarderFailed, match=f"{task} failed: RuntimeError: boom"):
            await asyncio.wait_for(running, 30)
    finally:
        if not running.done():
            forwarder.stop()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(running, 30)
    errors = [r for r in caplog.records
              if r.levelno == logging.ERROR and r.getMessage().startswith(f"{task} failed")]
    assert len(errors) == 1
    assert "RuntimeError: boom" in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()
    # it cleaned up as on a normal stop: no heartbeat left to make clients wait on it
    assert not await store.exists(layout.heartbeat_key(settings.id))


def test_wonders_forward_exits_1_when_the_forwarder_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from wonders.cli import main
    from wonders.crypto import PrivateKey, write_key_files

    async def failing(self: Forwarder) -> None:
        self.ready.set()
        raise ForwarderFailed("forwarder fw stopped: its janitor failed: RuntimeError: boom")

    monkeypatch.setattr(Forwarder, "run", failing)
    write_key_files(PrivateKey.generate("fw"), tmp_path)
    (tmp_path / "policy.toml").write_text("")
    (tmp_path / "mailbox").mkdir()
    (tmp_path / "forwarder.toml").write_text(
        f'id = "fw"\nkey = "fw.key"\npolicy = "policy.toml"\n'
        f'mailbox = "{(tmp_path / "mailbox").as_uri()}"\n')
    done = CliRunner().invoke(main, ["forward", "--config", str(tmp_path / "forwarder.toml")])
    assert done.exit_code == 1
    assert done.output.strip().splitlines()[-1] == (
        "wonders: error: forwarder fw stopped: its janitor failed: RuntimeError: boom")


def test_odd_names_are_reported_once_each_and_the_memory_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from wonders.mailbox import OddKeys

    caplog.set_level(logging.WARNING, "odd-test")
    odd = OddKeys(logging.getLogger("odd-test"), limit=3)
    for _ in range(5):  # listed again and again
        for i in range(100):
            odd.report(f"requests/gpu01/x {i}", "test")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # three names, then one line saying no more are reported
    assert lines[-1] == "3 odd object names reported; not reporting more"


async def test_many_odd_names_are_reported_once_not_on_every_listing(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Review: past 1024 odd names, the stores' reports were forgotten first-in and every
    listing logged every name again."""
    caplog.set_level(logging.WARNING, "wonders")
    names = [f"requests/gpu01/bad name {n}" for n in range(1100)]
    await asyncio.gather(*(put_raw(store, name, b"x") for name in names))
    for _ in range(3):
        assert [k async for k in store.list("requests/")] == []
    lines = [r for r in caplog.records if r.name.startswith("wonders")]
    assert len(lines) <= 1025  # 1024 names once each, then one line saying no more
