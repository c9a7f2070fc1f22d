"""Item 13: credentials in ``Location`` URLs and ``*-Key`` headers are redacted in the
audit log; nothing from the bucket reaches a terminal with its control characters; and
``wonders ping`` obeys the client's ``not_before``/``not_after`` window."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.cli.test_forward_cli import Process, _config
from tests.cli_runner import run_wonders
from tests.eventually import eventually
from tests.relay.harness import POLICY, Keys, Upstream, client_for, make_keys, running_forwarder
from tests.security.conftest import records
from wonders.audit import AuditWriter, iso_time
from wonders.cli.audit import _emit
from wonders.crypto import PrivateKey, write_key_files
from wonders.mailbox import DirectoryStore, Store
from wonders.relay.records import PING_URL

SECRETS = ("SECRET-SIG", "SECRET-CRED", "SECRET-AZ", "SECRET-TOKEN", "SECRET-OCP")


async def test_presigned_location_and_key_headers_are_not_recorded(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    presigned = ("https://bucket.example/model.bin?X-Amz-Signature=SECRET-SIG"
                 "&X-Amz-Credential=SECRET-CRED&sig=SECRET-AZ&token=SECRET-TOKEN&part=1")
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        url = f"{upstream.url}/redirect?to={quote(presigned, safe='')}"
        headers = (("Ocp-Apim-Subscription-Key", "SECRET-OCP"),)
        async with await client.request("GET", url, headers) as response:
            assert response.status == 302
            assert response.header("Location") == presigned  # the client gets it whole
    (record,) = await records(store, keys.forwarder)
    text = json.dumps(record)
    for secret in SECRETS:
        assert secret not in text
    location = dict(record["response_headers"])["Location"]
    assert location.startswith("https://bucket.example/model.bin?X-Amz-Signature=[redacted]")
    assert dict(record["request_headers"])["Ocp-Apim-Subscription-Key"] == "[redacted]"


EVIL = "\x1b]0;owned\x07\x1b[2J\x1b[31m"


@pytest.fixture
def evil_log(tmp_path: Path) -> tuple[Path, Path]:
    """An audit log whose one record carries escape sequences in every text field, as a
    client can put them in its URL, or a compromised forwarder key in anything."""
    key = PrivateKey.generate("fw")
    (tmp_path / "keys").mkdir()
    write_key_files(key, tmp_path / "keys", force=True)

    async def write() -> None:
        writer = AuditWriter(DirectoryStore(tmp_path / "audit"), key, "fw-a", interval=3600)
        await writer.open()
        writer.add({"time": iso_time(time.time()), "client": f"gpu{EVIL}", "method": "GET",
                    "host": f"h{EVIL}.example", "path": f"/p{EVIL}", "decision": "allow",
                    "status": None, "error": f"e{EVIL}", "id": "x", "attempt": 0})
        await writer.close(5)

    asyncio.run(write())
    return tmp_path / "audit", tmp_path / "keys" / "fw.pub"


def test_the_audit_table_prints_no_control_character(evil_log: tuple[Path, Path]) -> None:
    audit, pub = evil_log
    for extra in ((), ("--json",)):
        shown = run_wonders("audit", "--mailbox", audit.as_uri(), "--key", str(pub), *extra)
        assert shown.returncode == 0, shown.stderr
        assert "\x1b" not in shown.stdout
        assert "\x07" not in shown.stdout
        assert "\x1b" not in shown.stderr
    table = run_wonders("audit", "--mailbox", audit.as_uri(), "--key", str(pub))
    assert "\\x1b]0;owned\\x07" in table.stdout


def test_followed_records_print_no_control_character(capsys: pytest.CaptureFixture[str]) -> None:
    """``--follow`` prints each new batch's rows the same way, without a header."""
    _emit([{"time": "2026-11-23T10:00:00.000Z", "client": f"c{EVIL}", "path": EVIL}],
          as_json=False, header=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\\x1b[2J" in out


@pytest.mark.slow  # a forwarder process, whose own log handler is what is tested
async def test_forwarder_log_lines_escape_control_characters(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """An object name chosen by a mailbox writer is logged as not a key: escaped, one
    line."""
    write_key_files(keys.forwarder, tmp_path / "keys", force=True)  # beside make_keys'
    junk = tmp_path / "mailbox" / "requests" / f"x{EVIL}" / "y"
    junk.mkdir(parents=True)
    (junk / "head").write_bytes(b"junk")
    process = Process(_config(tmp_path, upstream), tmp_path / "forward.log")
    try:
        await eventually(lambda: "not a valid object key" in process.output(),
                         what="the odd name to be logged", explain=process.output)
    finally:
        process.proc.terminate()
        await process.wait()
    text = process.output()
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "requests/x\\x1b]0;owned\\x07" in text


async def test_ping_outside_the_clients_window_is_refused(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    ended = POLICY.replace('[clients.gpu01]\nbundle = "gpu01.pub"\n',
                           '[clients.gpu01]\nbundle = "gpu01.pub"\n'
                           'not_after = 2020-01-01T00:00:00Z\n')
    assert ended != POLICY
    keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]), ended)
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        async with await client.request("GET", PING_URL) as response:
            assert response.status == 403
            assert response.header("X-Wonders-Error") == "policy-denied"
            assert "not_after 2020-01-01T00:00:00Z" in (await response.read()).decode()
        async with client_for(store, keys, "locked") as other, \
                await other.request("GET", PING_URL) as response:
            assert response.status == 200  # a client within its window still gets its pong
