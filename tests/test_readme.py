"""The README's Python example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.slow  # the example as a script, in a new interpreter
def test_readme_python_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    runnable = [b for b in blocks if "asyncio.run(main())" in b]
    assert runnable, "the README has no runnable Python example"
    script = tmp_path / "example.py"
    script.write_text(runnable[0])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "GET https://huggingface.co/api/models/gpt2\n"


def test_readme_policy_example_loads_and_decides_as_shown(tmp_path: Path) -> None:
    """The policy file in the README is valid, and its check output is what it shows."""
    from click.testing import CliRunner

    from wonders.cli import main

    text = README.read_text()
    policy = re.search(r"```toml\n# policy.toml\n(.*?)```", text, flags=re.DOTALL)
    assert policy is not None
    (tmp_path / "keys").mkdir()
    runner = CliRunner()
    for name in ("gpu01", "setup-job"):
        done = runner.invoke(main, ["keygen", name, "--out", str(tmp_path / "keys")])
        assert done.exit_code == 0
    (tmp_path / "policy.toml").write_text(policy.group(1))
    valid = re.search(r"\$ wonders policy check --policy policy.toml\n(.*)\n", text)
    assert valid is not None
    check = runner.invoke(main, ["policy", "check", "--policy", str(tmp_path / "policy.toml")])
    assert check.exit_code == 0
    expected = valid.group(1).replace("policy.toml", str(tmp_path / "policy.toml"), 1)
    assert check.output == expected + "\n"
    shown = re.search(r"\$ (wonders policy check --policy policy.toml --client gpu01 .*)\n"
                      r"((?:(?:ALLOW|DENY).*\n)+)", text)
    assert shown is not None
    args = shown.group(1).split()[1:]
    args[args.index("policy.toml")] = str(tmp_path / "policy.toml")
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert result.output == shown.group(2)


def test_readme_forwarder_config_loads(tmp_path: Path) -> None:
    from wonders.cli.config import load_forwarder_config

    block = re.search(r"```toml\n# forwarder.toml\n(.*?)```", README.read_text(), re.DOTALL)
    assert block is not None
    (tmp_path / "forwarder.toml").write_text(block.group(1))
    config = load_forwarder_config(tmp_path / "forwarder.toml")
    assert config.settings.id == "fw1"
    assert config.mailbox == "s3://wonders/cluster-a"
    assert config.key == tmp_path / "fw1.key"
    assert config.audit.mailbox == "s3://wonders-audit/cluster-a"
    assert config.audit.endpoint == "http://minio:9000"  # the mailbox's, by default
    assert config.settings.audit_capacity == 10000


async def test_readme_relay_client_example_runs(tmp_path: Path) -> None:
    """The RelayClient snippet, with its paths pointed at a real forwarder and upstream."""
    import textwrap

    from tests.relay.harness import make_keys, running_forwarder, serve_upstream
    from wonders.crypto import write_key_files
    from wonders.mailbox import DirectoryStore

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    snippet = next(b for b in blocks if "RelayClient(" in b and "asyncio.run" not in b)
    async with serve_upstream(tmp_path) as upstream:
        keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
        write_key_files(keys.forwarder, tmp_path / "keys", force=True)
        (tmp_path / "mailbox").mkdir()
        store = DirectoryStore(tmp_path / "mailbox")
        code = (snippet.replace("file:///shared/wonders", store.url)
                .replace('"gpu01.key"', repr(str(tmp_path / "keys" / "gpu01.key")))
                .replace('"fw1.pub"', repr(str(tmp_path / "keys" / "fw.pub")))
                .replace("https://pypi.org/simple/", f"{upstream.url}/echo"))
        namespace: dict[str, object] = {}
        exec("async def example():\n" + textwrap.indent(code, "    "), namespace)  # noqa: S102
        async with running_forwarder(store, keys, upstream):
            await namespace["example"]()  # type: ignore[operator]
    assert upstream.hits["/echo"] == 1


def test_readme_client_config_loads(tmp_path: Path) -> None:
    from wonders.cli.config import load_client_config

    block = re.search(r"```toml\n# client.toml\n(.*?)```", README.read_text(), re.DOTALL)
    assert block is not None
    (tmp_path / "client.toml").write_text(block.group(1))
    config = load_client_config(tmp_path / "client.toml")
    assert (config.key, config.forwarder) == (tmp_path / "gpu01.key", tmp_path / "fw1.pub")
    assert config.timeout == 300


def test_readme_wonder_run_flags_exist() -> None:
    """Every option the README shows for wonder-run is one it accepts."""
    from click.testing import CliRunner

    from wonders.proxy.run import main

    help_text = CliRunner().invoke(main, ["--help"]).output
    shown = set(re.findall(r"wonder-run[^\n`]*", README.read_text()))
    own = [re.split(r" \[?--\]? ", line)[0] for line in shown]  # the command's flags follow --
    flags = {flag for line in own for flag in re.findall(r"--[a-z][a-z-]+", line)}
    assert flags, "no flags found"
    for flag in flags:
        assert flag in help_text, flag


def test_readme_audit_flags_exist() -> None:
    """Every option the README shows for wonders audit (and verify, stats) exists."""
    from click.testing import CliRunner

    from wonders.cli import main

    text = README.read_text()
    section = text[text.index("## Audit log"):text.index("## Using the building blocks")]
    for command in ([], ["verify"], ["stats"]):
        help_text = CliRunner().invoke(main, ["audit", *command, "--help"]).output
        prefix = " ".join(["wonders audit", *command])
        lines = [line for line in re.findall(r"`(wonders audit[^`]*)`", section, re.DOTALL)
                 if line.split("[")[0].split() == prefix.split()]
        assert lines, prefix
        for flag in {f for line in lines for f in re.findall(r"--[a-z][a-z-]+", line)}:
            assert flag in help_text, (prefix, flag)


def test_readme_wonders_commands_exist() -> None:
    """Every `wonders …` command line in the README names a command that exists, with
    options it accepts."""
    import click
    from click.testing import CliRunner

    from wonders.cli import main

    assert isinstance(main, click.Group)
    checked = 0
    for line in re.findall(r"(?:^|[`$] ?)(wonders [a-z][^`\n]*)", README.read_text(),
                           re.MULTILINE):
        words = line.split()
        if words[1] not in main.commands:
            continue  # prose ("with wonders the …") or output ("wonders forward: …")
        command: click.Command = main
        path: list[str] = []
        for word in words[1:]:
            if not isinstance(command, click.Group) or word not in command.commands:
                break
            command = command.commands[word]
            path.append(word)
        assert path, line
        help_text = CliRunner().invoke(main, [*path, "--help"]).output
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+", line):
            assert flag in help_text, (line, flag)
        checked += 1
    assert checked > 20
