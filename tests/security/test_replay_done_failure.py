"""A mailbox writer makes the done marker fail while a POST is upstream, then puts the
claims back out of the way: the forwarder must not run the POST again (found by review:
the id was recorded as executed only after the done marker was stored)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from tests.relay.harness import FAST, client_for, make_keys, running_forwarder, serve_upstream
from tests.security.conftest import until
from wonders.mailbox import DirectoryStore


async def test_a_failed_done_marker_does_not_let_a_post_run_again(tmp_path: Path) -> None:
    settings = dataclasses.replace(FAST, stale_after=2.0)
    async with serve_upstream(tmp_path) as upstream:
        keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
        mailbox, elsewhere = tmp_path / "mailbox", tmp_path / "elsewhere"
        mailbox.mkdir()
        elsewhere.mkdir()
        async with DirectoryStore(mailbox) as store, \
                running_forwarder(store, keys, upstream, settings), \
                client_for(store, keys) as client:
            task = asyncio.create_task(client.request("POST", f"{upstream.url}/hold", (),
                                                      b"transfer 100"))
            await asyncio.wait_for(upstream.held.wait(), 30)
            # the attacker, while the POST is upstream: the claims go out of the listing,
            # and a link stands where the done marker would be written
            (rid,) = os.listdir(mailbox / "claims")
            os.rename(mailbox / "claims" / rid, mailbox / "claims" / f".moved-{rid}")
            os.symlink(elsewhere, mailbox / "claims" / rid)
            upstream.release.set()
            async with await asyncio.wait_for(task, 30) as response:
                assert response.status == 200
                await response.read()
            head = mailbox / "requests" / "gpu01" / rid / "head"
            assert head.exists()  # the forwarder could not finish: the head is still there
            os.unlink(mailbox / "claims" / rid)  # the attacker tidies up

            async def dealt_with() -> bool:  # the forwarder has looked at it again
                return not head.exists()

            await until(dealt_with, "the forwarder to look at the request again")
    assert upstream.hits["/hold"] == 1, "the POST ran again"
