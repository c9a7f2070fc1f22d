"""The two config files: the forwarder's (its ``[audit]`` and ``[tuning]`` tables) and the
client's, read by :mod:`wonders.cli.config`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wonders.cli.config import load_client_config, load_forwarder_config
from wonders.errors import ConfigError

BASE = """id = "fw1"
key = "fw1.key"
policy = "policy.toml"
mailbox = "s3://wonders/cluster-a"
endpoint = "http://minio:9000"
"""


def test_the_audit_log_defaults_to_the_mailbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    config = load_forwarder_config(_write(tmp_path, ""))
    assert (config.audit.mailbox, config.audit.endpoint) == (config.mailbox, config.endpoint)
    assert config.audit.keep_query is False
    assert config.audit.spool == tmp_path / "state" / "wonders" / "audit-spool-fw1.jsonl"


def _write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "forwarder.toml"
    path.write_text(BASE + extra)
    return path


def test_the_audit_table_names_a_separate_store_and_its_settings(tmp_path: Path) -> None:
    config = load_forwarder_config(_write(tmp_path, """
[audit]
mailbox = "s3://audit-locked/a"
keep_query = true
spool = "state/spool.jsonl"
"""))
    assert config.audit.mailbox == "s3://audit-locked/a"
    assert config.audit.endpoint == "http://minio:9000"  # same S3 service by default
    assert config.audit.keep_query is True
    assert config.audit.spool == tmp_path / "state" / "spool.jsonl"
    local = load_forwarder_config(_write(tmp_path, '[audit]\nmailbox = "file:///srv/audit"\n'))
    assert local.audit.endpoint is None  # an endpoint only applies to s3://


@pytest.mark.parametrize(("extra", "message"), [
    ("[audit]\nmailbx = 'x'\n", "audit.mailbx: unknown key (did you mean 'mailbox'?); "
     "known keys: mailbox, endpoint, path_style, keep_query, spool"),
    ("[audit]\nkeep_query = 'yes'\n", "audit.keep_query: expected true or false, not 'yes'"),
    ("[audit]\nspool = ''\n", "audit.spool: expected a file path, not ''"),
    ("audit = 3\n", "audit: expected a table, not 3"),
    ("[tuning]\naudit_capacity = 0\n",
     "tuning.audit_capacity: expected a whole number above 0, not 0"),
])
def test_audit_config_errors_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_forwarder_config(_write(tmp_path, extra))
    assert str(raised.value) == f"{tmp_path / 'forwarder.toml'}: {message}"


CLIENT = 'key = "gpu01.key"\nforwarder = "keys/fw1.pub"\nmailbox = "s3://wonders/cluster-a"\n'


def test_a_client_config_resolves_its_paths_against_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text(CLIENT + 'endpoint = "http://minio:9000"\nnotifications = "minio"\n'
                    "timeout = 30\n")
    config = load_client_config(path)
    assert (config.key, config.forwarder) == (tmp_path / "gpu01.key",
                                              tmp_path / "keys" / "fw1.pub")
    assert (config.mailbox, config.endpoint, config.notifications) == (
        "s3://wonders/cluster-a", "http://minio:9000", "minio")
    assert config.timeout == 30.0
    assert isinstance(config.timeout, float)
    assert (config.path_style, config.isolate) == (False, False)


@pytest.mark.parametrize(("text", "message"), [
    (CLIENT + "mailbx = 'x'\n", "mailbx: unknown key (did you mean 'mailbox'?); known keys: "
     "key, forwarder, mailbox, endpoint, path_style, timeout, notifications, isolate"),
    ('forwarder = "f"\nmailbox = "m"\n', "key: missing"),
    ('key = 3\nforwarder = "f"\nmailbox = "m"\n', "key: expected a file path, not 3"),
    (CLIENT + "timeout = 0\n", "timeout: expected seconds above 0, not 0"),
    (CLIENT + "timeout = true\n", "timeout: expected seconds above 0, not true"),
    (CLIENT + "path_style = 1\n", "path_style: expected true or false, not 1"),
    (CLIENT + "endpoint = 9000\n", "endpoint: expected a non-empty string, not 9000"),
    (CLIENT + "notifications = 'sqs'\n",
     "notifications: expected \"none\" or \"minio\", not 'sqs'"),
    (CLIENT + "notifications = 'minio'\n",
     "notifications: MinIO notifications need the MinIO 'endpoint'"),
])
def test_client_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "client.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_client_config(path)
    assert str(raised.value) == f"{path}: {message}"
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(("extra", "message"), [
    ("[tuning]\nmax_in_flight = 1.5\n", "tuning.max_in_flight: expected a whole number above 0, "
     "not 1.5"),
    ("[tuning]\npoll_slow = 'fast'\n", "tuning.poll_slow: expected a number above 0, not 'fast'"),
    ("[tuning]\nmax_inflight = 3\n", "tuning.max_inflight: unknown key (did you mean "
     "'max_in_flight'?)"),
    ("path_style = 'no'\n", "path_style: expected true or false, not 'no'"),
    ("notifications = 'minio'\nendpoint = ''\n", "endpoint: expected a non-empty string, not ''"),
    ("upstream_ca = []\n", "upstream_ca: expected a file path, not []"),
    ('id = "fw 1"\n', "id: invalid name 'fw 1'"),
])
def test_forwarder_config_errors_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    given = {line.split(" =")[0] for line in extra.splitlines()}
    kept = [line for line in BASE.splitlines(keepends=True) if line.split(" =")[0] not in given]
    path = tmp_path / "forwarder.toml"
    path.write_text("".join(kept) + extra)
    with pytest.raises(ConfigError) as raised:
        load_forwarder_config(path)
    assert str(raised.value).startswith(f"{path}: {message}")


def test_tuning_sets_forwarder_settings_of_their_own_types(tmp_path: Path) -> None:
    config = load_forwarder_config(_write(tmp_path, "[tuning]\nmax_in_flight = 8\n"
                                                    "poll_slow = 2\n"))
    assert config.settings.max_in_flight == 8
    assert config.settings.poll_slow == 2.0
    assert isinstance(config.settings.poll_slow, float)
    assert config.settings.id == "fw1"


def test_reading_the_client_config_loads_neither_the_commands_nor_the_forwarder() -> None:
    """wonder-run reads its config through wonders.cli.config: that must not pull in the
    click command groups, the forwarder or the audit writer (the GPU side never loads
    them)."""
    code = ("import sys, wonders.cli.config, wonders.proxy.run\n"
            "print(sorted(m for m in sys.modules if m.startswith(('wonders.cli.', "
            "'wonders.relay.forwarder', 'wonders.audit', 'prometheus_client'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "['wonders.cli.config']"
