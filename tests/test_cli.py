"""The ``wonders`` command line."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

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
