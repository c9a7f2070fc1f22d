"""``wonders ARGS`` in the tests' own process.

The same code as the console script, through click's runner, without a second
interpreter's start-up (a second or more on a loaded machine). The installed script itself
is run as a process in tests/test_cli.py; a test that is about the process (signals, its
log, its exit while serving) runs the script.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from click.testing import CliRunner

from wonders.cli import main


def run_wonders(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``wonders ARGS`` (in ``cwd``) and return its exit status, stdout and stderr as
    :func:`subprocess.run` would. An exception that escapes the command is raised here: a
    console script would have printed it as a traceback."""
    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        result = CliRunner().invoke(main, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["wonders", *args], result.exit_code, result.stdout,
                                       result.stderr)
