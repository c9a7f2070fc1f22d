"""The forwarder config's ``[audit]`` table."""

from __future__ import annotations

from pathlib import Path

import pytest

from wonders.config import load_forwarder_config
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
    ("[audit]\nmailbx = 'x'\n", "audit.mailbx: unknown key (did you mean 'mailbox'?)"),
    ("[audit]\nkeep_query = 'yes'\n", "audit.keep_query: expected true or false"),
    ("[audit]\nspool = ''\n", "audit.spool: expected a non-empty string"),
    ("audit = 3\n", "audit: expected a table"),
    ("[tuning]\naudit_capacity = 0\n",
     "tuning.audit_capacity: expected a whole number above 0, not 0"),
])
def test_audit_config_errors_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_forwarder_config(_write(tmp_path, extra))
    assert str(raised.value) == f"{tmp_path / 'forwarder.toml'}: {message}"
