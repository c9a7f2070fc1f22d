"""The one strict TOML table reader (:mod:`wonders.tomlconfig`): every getter's type
check, unknown keys with a suggestion, relative paths, dotted names of nested tables, and
the record of what a loader read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wonders.errors import ConfigError, PolicyError
from wonders.tomlconfig import Table, describe, parse_size

KEYS = ("name", "count", "ratio", "on", "mode", "file", "limit", "hosts", "sub")


def table(text: str, keys: tuple[str, ...] | None = KEYS, **kwargs: Any) -> Table:
    return Table.parse(text, keys=keys, source="conf.toml", **kwargs)


GETTERS: dict[str, Callable[[Table, str], object]] = {
    "string": lambda t, k: t.string(k),
    "integer": lambda t, k: t.integer(k),
    "integer above 0": lambda t, k: t.integer(k, above=0),
    "integer at least 1": lambda t, k: t.integer(k, minimum=1),
    "number": lambda t, k: t.number(k),
    "number above 0": lambda t, k: t.number(k, above=0),
    "boolean": lambda t, k: t.boolean(k),
    "choice": lambda t, k: t.choice(k, ("none", "minio", "other")),
    "path": lambda t, k: t.path(k),
    "size": lambda t, k: t.size(k),
    "strings": lambda t, k: t.strings(k),
    "table": lambda t, k: t.table(k, keys=None),
}

WRONG_TYPES = [
    ("string", "3", "expected a non-empty string, not 3"),
    ("string", "''", "expected a non-empty string, not ''"),
    ("string", "[1]", "expected a non-empty string, not [1]"),
    ("integer", "1.5", "expected a whole number, not 1.5"),
    ("integer", "true", "expected a whole number, not true"),
    ("integer", "'7'", "expected a whole number, not '7'"),
    ("integer above 0", "0", "expected a whole number above 0, not 0"),
    ("integer at least 1", "0", "expected a whole number (at least 1), not 0"),
    ("number", "false", "expected a number, not false"),
    ("number", "'fast'", "expected a number, not 'fast'"),
    ("number above 0", "-0.5", "expected a number above 0, not -0.5"),
    ("boolean", "'yes'", "expected true or false, not 'yes'"),
    ("boolean", "1", "expected true or false, not 1"),
    ("choice", "'MinIO'", "expected \"none\", \"minio\" or \"other\", not 'MinIO'"),
    ("choice", "2", "expected \"none\", \"minio\" or \"other\", not 2"),
    ("path", "5", "expected a file path, not 5"),
    ("path", "''", "expected a file path, not ''"),
    ("size", "'lots'", 'expected a byte count (e.g. 10485760 or "10 MiB"), not \'lots\''),
    ("size", "-1", 'expected a byte count (e.g. 10485760 or "10 MiB"), not -1'),
    ("strings", "'a.com'", "expected a list of strings, not 'a.com'"),
    ("strings", "['a', 2]", "expected a list of strings, not ['a', 2]"),
    ("table", "3", "expected a table, not 3"),
    ("table", "2026-12-01", "expected a table, not 2026-12-01"),
]


@pytest.mark.parametrize(("getter", "value", "message"), WRONG_TYPES,
                         ids=[f"{g}-{v}" for g, v, _ in WRONG_TYPES])
def test_a_wrong_type_names_the_file_the_key_what_was_found_and_what_is_expected(
    getter: str, value: str, message: str
) -> None:
    doc = table(f"[sub]\nkey = {value}\n", keys=("sub",))
    sub = doc.table("sub", keys=("key",))
    with pytest.raises(ConfigError) as raised:
        GETTERS[getter](sub, "key")
    assert str(raised.value) == f"conf.toml: sub.key: {message}"


GOOD_VALUES = [
    ("string", "'x'", "x"),
    ("integer", "7", 7),
    ("integer above 0", "1", 1),
    ("number", "3", 3.0),
    ("number above 0", "0.25", 0.25),
    ("boolean", "false", False),
    ("choice", "'minio'", "minio"),
    ("size", "'10 MiB'", 10 * 2**20),
    ("size", "'2.5 GB'", 2_500_000_000),
    ("size", "0", 0),
    ("strings", "[]", []),
    ("strings", "['a', 'b']", ["a", "b"]),
]


@pytest.mark.parametrize(("getter", "value", "expected"), GOOD_VALUES,
                         ids=[f"{g}-{v}" for g, v, _ in GOOD_VALUES])
def test_each_getter_returns_the_value_of_its_type(getter: str, value: str,
                                                   expected: object) -> None:
    doc = table(f"key = {value}\n", keys=("key",))
    got = GETTERS[getter](doc, "key")
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("getter", sorted(set(GETTERS) - {"table"}))
def test_an_absent_key_is_missing_or_its_default(getter: str) -> None:
    doc = table("", keys=("key",))
    with pytest.raises(ConfigError, match=r"^conf\.toml: key: missing$"):
        GETTERS[getter](doc, "key")
    sentinel = object()
    assert doc.string("key", sentinel) is sentinel
    assert doc.integer("key", None, above=0) is None


def test_an_absent_table_is_empty_unless_required() -> None:
    doc = table("", keys=("sub",))
    sub = doc.table("sub", keys=("x",))
    assert sub.boolean("x", True) is True
    with pytest.raises(ConfigError, match=r"^conf\.toml: sub: missing$"):
        doc.table("sub", keys=("x",), required=True)


def test_an_unknown_key_suggests_the_nearest_and_lists_the_known() -> None:
    with pytest.raises(ConfigError) as raised:
        table('nmae = "x"\n')
    assert str(raised.value) == (
        "conf.toml: nmae: unknown key (did you mean 'name'?); known keys: "
        "name, count, ratio, on, mode, file, limit, hosts, sub")


def test_an_unknown_key_with_nothing_near_is_only_listed() -> None:
    with pytest.raises(ConfigError) as raised:
        table("zzzzzz = 1\n", keys=("name", "count"))
    assert str(raised.value) == "conf.toml: zzzzzz: unknown key; known keys: name, count"


def test_an_unknown_key_is_reported_before_the_missing_key_it_misspells() -> None:
    """The check runs when the table is opened, so the typo is what the user reads."""
    with pytest.raises(ConfigError, match="mailbx: unknown key"):
        Table.parse('mailbx = "x"\n', keys=("mailbox",), source="c.toml").string("mailbox")


def test_nested_tables_name_their_keys_in_full() -> None:
    doc = table('[sub.gpu01]\nallow = ["a"]\nalow = 1\n', keys=("sub",))
    clients = doc.table("sub", keys=None)
    assert list(clients) == ["gpu01"]
    with pytest.raises(ConfigError) as raised:
        clients.table("gpu01", keys=("allow", "deny"))
    assert str(raised.value).startswith(
        "conf.toml: sub.gpu01.alow: unknown key (did you mean 'allow'?)")
    entry = table('[sub.gpu01]\nallow = ["a"]\n', keys=("sub",)).table(
        "sub", keys=None).table("gpu01", keys=("allow",))
    assert entry.name == "sub.gpu01"
    assert str(entry.fail("allow[0]", "bad")) == "conf.toml: sub.gpu01.allow[0]: bad"
    assert str(entry.fail(None, "bad")) == "conf.toml: sub.gpu01: bad"


def test_a_key_that_could_break_the_line_is_quoted_in_messages() -> None:
    with pytest.raises(ConfigError) as raised:
        table('"bad\\nkey" = 1\n')
    assert "\n" not in str(raised.value)
    assert "'bad\\nkey': unknown key" in str(raised.value)


def test_a_relative_path_is_relative_to_the_files_directory(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    conf = tmp_path / "etc" / "conf.toml"
    conf.write_text('file = "keys/fw1.key"\nname = "/abs/fw1.key"\nhosts = "~/x.pem"\n')
    doc = Table.load(conf, keys=KEYS)
    assert doc.path("file") == tmp_path / "etc" / "keys" / "fw1.key"
    assert doc.path("name") == Path("/abs/fw1.key")
    assert doc.path("hosts") == Path.home() / "x.pem"
    assert doc.path("count", None) is None
    # a sub-table resolves against the same directory
    conf.write_text('[sub]\nfile = "spool.jsonl"\n')
    sub = Table.load(conf, keys=KEYS).table("sub", keys=("file",))
    assert sub.path("file") == tmp_path / "etc" / "spool.jsonl"


def test_a_parsed_text_resolves_against_the_base_given() -> None:
    doc = Table.parse('file = "a.pub"\n', keys=("file",), source="<text>", base=Path("/srv"))
    assert doc.path("file") == Path("/srv/a.pub")


def test_a_key_read_twice_gives_the_same_value_and_is_recorded_once() -> None:
    doc = table('name = "fw1"\ncount = 3\n')
    assert doc.string("name") == doc.string("name") == "fw1"
    assert doc.read == {"name"}
    doc.integer("count")
    doc.integer("count", 5)
    assert doc.read == {"name", "count"}
    doc.finish()
    # the second read checks its own type: a string is not a whole number
    with pytest.raises(ConfigError, match="name: expected a whole number, not 'fw1'"):
        doc.integer("name")


def test_finish_catches_a_key_the_loader_declared_but_never_read() -> None:
    doc = table('name = "fw1"\n[sub]\non = true\n')
    doc.string("name")
    sub = doc.table("sub", keys=("on",))
    with pytest.raises(AssertionError, match=r"sub\.on was never read"):
        doc.finish()
    sub.boolean("on")
    doc.finish()


def test_reading_a_key_the_loader_did_not_declare_is_a_bug() -> None:
    with pytest.raises(AssertionError, match="not one of the keys"):
        table("").string("nmae", None)


def test_errors_are_the_class_given_with_its_exit_status(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as raised:
        Table.parse("clients = 3", keys=("clients",), source="policy.toml",
                    error=PolicyError).table("clients", keys=None)
    assert raised.value.exit_code == 2
    with pytest.raises(PolicyError, match=r"^.*absent\.toml: no such policy file$"):
        Table.load(tmp_path / "absent.toml", keys=None, what="policy file", error=PolicyError)
    with pytest.raises(ConfigError, match="not valid TOML"):
        Table.parse("a = [", keys=None, source="c.toml")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"binary\.toml: cannot read config file: "):
        Table.load(tmp_path / "binary.toml", keys=None)


@pytest.mark.parametrize(("text", "size"), [
    ("512", 512), ("1 KB", 1000), ("1KiB", 1024), ("2.5 GiB", int(2.5 * 2**30)),
    (" 3 tb ", 3 * 10**12), ("7B", 7),
])
def test_byte_counts_take_si_and_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1 XB", "-1", "1e3", "1 MiB extra"])
def test_a_byte_count_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a byte count"):
        parse_size(text)


def test_found_values_are_shown_in_tomls_spelling_and_cut_short() -> None:
    assert describe(True) == "true"
    assert describe([1, "a", False]) == "[1, 'a', false]"
    assert describe({"a": 1}) == "a table"
    assert describe("x" * 100).endswith("…")
    assert len(describe("x" * 100)) == 60
