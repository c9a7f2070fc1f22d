"""The ``wonders`` command line."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from wonders.cli import main
from wonders.crypto import load_private_key, load_public_bundle


def test_keygen_writes_both_files_and_prints_the_key_id(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keygen", "gpu01", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    key = load_private_key(tmp_path / "gpu01.key")
    assert load_public_bundle(tmp_path / "gpu01.pub").kid == key.kid
    assert f"key id: {key.kid}" in result.output
    assert stat.S_IMODE((tmp_path / "gpu01.key").stat().st_mode) == 0o600


def test_keygen_refuses_to_overwrite_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["keygen", "gpu01", "--out", str(tmp_path)]).exit_code == 0
    before = (tmp_path / "gpu01.key").read_bytes()
    result = runner.invoke(main, ["keygen", "gpu01", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.startswith("wonders: error: ")
    assert "already exists" in result.output
    assert "--force" in result.output
    assert result.output.count("\n") == 1
    assert (tmp_path / "gpu01.key").read_bytes() == before
    forced = runner.invoke(main, ["keygen", "gpu01", "--out", str(tmp_path), "--force"])
    assert forced.exit_code == 0
    assert (tmp_path / "gpu01.key").read_bytes() != before


def test_keygen_rejects_a_bad_name_as_usage(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keygen", "../evil", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "invalid name" in result.output
    assert list(tmp_path.iterdir()) == []


def test_keygen_into_a_missing_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keygen", "gpu01", "--out", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "no such directory" in result.output


@pytest.mark.slow  # the console script as processes
def test_the_installed_command_runs(tmp_path: Path) -> None:
    """The console script that pip installed, as a user runs it."""
    script = Path(sys.executable).parent / "wonders"
    help_text = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert "keygen" in help_text.stdout
    done = subprocess.run(
        [script, "keygen", "fw1", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fw1.pub").exists()


def _policy(tmp_path: Path, text: str) -> Path:
    runner = CliRunner()
    for name in ("gpu01", "gpu02"):
        assert runner.invoke(main, ["keygen", name, "--out", str(tmp_path)]).exit_code == 0
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


POLICY = """
[clients.gpu01]
bundle = "gpu01.pub"
allow = ["*.hf.co", "pypi.org"]

[clients.gpu02]
bundle = "gpu02.pub"
allow = ["pypi.org"]
mode = "report"
"""


def test_policy_check_validates_a_file(tmp_path: Path) -> None:
    path = _policy(tmp_path, POLICY)
    result = CliRunner().invoke(main, ["policy", "check", "--policy", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid; clients: gpu01, gpu02" in result.output


def test_policy_check_invalid_file_exits_2_with_the_key_path(tmp_path: Path) -> None:
    path = _policy(tmp_path, POLICY.replace('allow = ["pypi.org"]', 'alow = ["pypi.org"]'))
    result = CliRunner().invoke(main, ["policy", "check", "--policy", str(path)])
    assert result.exit_code == 2
    assert result.output == (
        f"wonders: error: {path}: clients.gpu02.alow: unknown key (did you mean 'allow'?); "
        "known keys: bundle, allow, deny, not_before, not_after, methods, ports, schemes, "
        "max_request_bytes, max_response_bytes, rate_per_minute, max_concurrent, "
        "egress_bytes_per_day, max_header_bytes, max_url_length, mode, allow_private, "
        "follow_redirects\n"
    )


def test_policy_check_decides_urls_and_names_rules(tmp_path: Path) -> None:
    path = _policy(tmp_path, POLICY)
    runner = CliRunner()
    ok = runner.invoke(main, ["policy", "check", "--policy", str(path), "--client", "gpu01",
                              "https://cdn.hf.co/x", "https://pypi.org/simple/"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines() == [
        'ALLOW  GET https://cdn.hf.co/x  [client gpu01: allow[0] "*.hf.co"]  cdn.hf.co is allowed',
        'ALLOW  GET https://pypi.org/simple/  [client gpu01: allow[1] "pypi.org"]  '
        "pypi.org is allowed",
    ]
    denied = runner.invoke(main, ["policy", "check", "--policy", str(path), "--client", "gpu01",
                                  "--method", "post", "https://hf.co/", "https://pypi.org/"])
    assert denied.exit_code == 1
    assert denied.output.splitlines()[0].startswith(
        "DENY   POST https://hf.co/  [client gpu01: default deny]"
    )
    report = runner.invoke(main, ["policy", "check", "--policy", str(path), "--client", "gpu02",
                                  "https://example.org/"])
    assert report.exit_code == 0
    assert report.output.startswith("REPORT GET https://example.org/")


def test_policy_check_resolve_applies_the_address_guard(tmp_path: Path) -> None:
    path = _policy(tmp_path, POLICY.replace('"pypi.org"]\n\n', '"pypi.org", "localhost"]\n\n', 1))
    runner = CliRunner()
    plain = runner.invoke(main, ["policy", "check", "--policy", str(path), "--client", "gpu01",
                                 "http://localhost/"])
    assert plain.exit_code == 0, plain.output
    guarded = runner.invoke(main, ["policy", "check", "--policy", str(path), "--client", "gpu01",
                                   "--resolve", "http://localhost/"])
    assert guarded.exit_code == 1
    assert "[address guard: loopback]" in guarded.output
    assert "localhost resolves to" in guarded.output


def test_policy_check_needs_a_known_client_for_urls(tmp_path: Path) -> None:
    path = _policy(tmp_path, POLICY)
    runner = CliRunner()
    missing = runner.invoke(main, ["policy", "check", "--policy", str(path), "https://x/"])
    assert missing.exit_code == 2
    assert "--client is required" in missing.output
    unknown = runner.invoke(main, ["policy", "check", "--policy", str(path), "--client", "gpu9",
                                   "https://x/"])
    assert unknown.exit_code == 2
    assert "client 'gpu9' is not in" in unknown.output
