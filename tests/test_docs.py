"""The documents' examples work as shown: the README and every page in docs/.

Python blocks run, the policy example decides as shown, the config examples load, every
flag shown for `wonder-run` or a `wonders` command exists, the README's install and test
commands are the ones CI runs, and every link between the pages leads somewhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _page(name: str) -> str:
    return (ROOT / name).read_text()


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def _shown(pattern: str, flags: int = 0) -> list[str]:
    """Every match of ``pattern`` on every page (the first group if it has one)."""
    return [match for page in PAGES for match in re.findall(pattern, page.read_text(), flags)]


def test_the_envelope_example_runs(tmp_path: Path) -> None:
    runnable = [b for b in _blocks(_page("docs/python.md"), "python") if "asyncio.run(main())" in b]
    assert len(runnable) == 1, "docs/python.md has no runnable Python example"
    script = tmp_path / "example.py"
    script.write_text(runnable[0])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "GET https://huggingface.co/api/models/gpt2\n"


def test_the_policy_example_loads_and_decides_as_shown(tmp_path: Path) -> None:
    """The policy file in docs/policy.md is valid, and its check output is what it shows."""
    from click.testing import CliRunner

    from wonders.cli import main

    text = _page("docs/policy.md")
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


def test_the_forwarder_config_example_loads(tmp_path: Path) -> None:
    from wonders.cli.config import load_forwarder_config

    block = re.search(r"```toml\n# forwarder.toml\n(.*?)```", _page("docs/forwarder.md"),
                      re.DOTALL)
    assert block is not None
    (tmp_path / "forwarder.toml").write_text(block.group(1))
    config = load_forwarder_config(tmp_path / "forwarder.toml")
    assert config.settings.id == "fw1"
    assert config.mailbox == "s3://wonders/cluster-a"
    assert config.key == tmp_path / "fw1.key"
    assert config.audit.mailbox == "s3://wonders-audit/cluster-a"
    assert config.audit.endpoint == "http://minio:9000"  # the mailbox's, by default
    assert config.settings.audit_capacity == 10000


async def test_the_relay_client_example_runs(tmp_path: Path) -> None:
    """The RelayClient snippet, with its paths pointed at a real forwarder and upstream."""
    import textwrap

    from tests.relay.harness import make_keys, running_forwarder, serve_upstream
    from wonders.crypto import write_key_files
    from wonders.mailbox import DirectoryStore

    blocks = _blocks(_page("docs/python.md"), "python")
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


def test_every_client_config_example_loads(tmp_path: Path) -> None:
    """The README's (as `wonders init client` writes it) and docs/wonder-run.md's (every
    key) load, their paths relative to the file."""
    import tomllib

    from wonders.cli.config import load_client_config

    blocks = _shown(r"```toml\n# client.toml\n(.*?)```", re.DOTALL)
    assert len(blocks) >= 2
    assert any(b in _page("README.md") for b in blocks)
    timeouts = set()
    for n, block in enumerate(blocks):
        path = tmp_path / str(n) / "client.toml"
        path.parent.mkdir()
        path.write_text(block)
        config = load_client_config(path)
        written = tomllib.loads(block)
        assert config.key == path.parent / written["key"]
        assert config.forwarder == path.parent / written["forwarder"]
        timeouts.add(config.timeout)
    assert 300 in timeouts


def test_every_wonder_run_flag_shown_exists() -> None:
    """Every option any page shows for wonder-run is one it accepts."""
    from click.testing import CliRunner

    from wonders.proxy.run import main

    help_text = CliRunner().invoke(main, ["--help"]).output
    shown = set(_shown(r"wonder-run[^\n`]*"))
    own = [re.split(r" \[?--\]? ", line)[0] for line in shown]  # the command's flags follow --
    flags = {flag for line in own for flag in re.findall(r"--[a-z][a-z-]+", line)}
    assert {"--local", "--isolate", "--check", "--config"} <= flags
    for flag in flags:
        assert flag in help_text, flag


def test_every_audit_flag_shown_exists() -> None:
    """Every option shown for wonders audit (and verify, stats) exists, in synopses that
    span lines too."""
    from click.testing import CliRunner

    from wonders.cli import main

    spans = _shown(r"`(wonders audit[^`]*)`", re.DOTALL)
    for command in ([], ["verify"], ["stats"]):
        help_text = CliRunner().invoke(main, ["audit", *command, "--help"]).output
        prefix = " ".join(["wonders audit", *command])
        lines = [line for line in spans if line.split("[")[0].split() == prefix.split()]
        assert lines, prefix
        for flag in {f for line in lines for f in re.findall(r"--[a-z][a-z-]+", line)}:
            assert flag in help_text, (prefix, flag)


def test_every_wonders_command_shown_exists() -> None:
    """Every `wonders …` command line on any page names a command that exists, with
    options it accepts."""
    import click
    from click.testing import CliRunner

    from wonders.cli import main

    assert isinstance(main, click.Group)
    checked = 0
    for line in _shown(r"(?:^|[`$] ?)(wonders [a-z][^`\n]*)", re.MULTILINE):
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


def test_the_readme_installs_and_tests_as_ci_does() -> None:
    """.ci/run executes the README's install and test commands (quietly); the README
    documents the fast tier as the inner loop."""
    ci = (ROOT / ".ci" / "run").read_text()
    marked = ci.split("# --- the README's install and test commands", 1)[1].split("\n# ---", 1)[0]
    run = [re.sub(r" (--quiet|-p no:cacheprovider)", "", line.split("|")[0]).strip()
           for line in marked.splitlines()[1:] if line.strip()]
    assert run == ["python -m pip install -e '.[dev]'", "python -m pytest"]
    commands = _blocks(README.read_text(), "bash")
    assert any(b.strip().split(" && ")[-2:] == run for b in commands), commands
    assert 'python -m pytest -m "not slow"\n' in commands


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    anchors: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#{1,6} (.*)", line)):
            slug = _slug(heading.group(1))
            n = 0
            while (numbered := slug if n == 0 else f"{slug}-{n}") in anchors:
                n += 1
            anchors.add(numbered)
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_link_between_the_pages_leads_somewhere(page: Path) -> None:
    """A link to another file names one that exists, and an anchor names a heading there."""
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), (page.name, target)
        if anchor:
            assert anchor in _anchors(linked.read_text()), (page.name, target)
