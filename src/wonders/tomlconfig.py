"""The one strict reader of TOML tables: the forwarder's config, the client config and the
policy file are all read through :class:`Table`.

A :class:`Table` wraps one parsed table with the file it came from, the table's dotted name
in that file and the directory relative paths are resolved against. It is created with the
keys it may hold (``keys=``), or ``keys=None`` for a table whose keys are names (the
policy's ``[clients]``); a key outside that list is an error at once, with the nearest
known key (:mod:`difflib`) and the list of known keys, so a typo is reported before the
"missing" error it causes. Typed getters (:meth:`~Table.string`, :meth:`~Table.integer`,
:meth:`~Table.number`, :meth:`~Table.boolean`, :meth:`~Table.choice`, :meth:`~Table.path`,
:meth:`~Table.size`, :meth:`~Table.strings`, :meth:`~Table.table`) return the value or the
default given, and fail with one line that names the file, the dotted key, what was
expected and what was found::

    forwarder.toml: audit.keep_query: expected true or false, not 'yes'

Every key read is recorded; :meth:`~Table.finish` checks that the loader read every key the
file holds (in every sub-table it opened), so a key that a loader declares but forgets to
read cannot be ignored in silence: that is a bug, and it raises :class:`AssertionError`.

Errors are the ``error`` class given (:class:`~wonders.errors.ConfigError`, or
:class:`~wonders.errors.PolicyError` for the policy), so their exit status stays 2.

This module sits at the top of the package beside :mod:`wonders.errors`: the policy package
and the proxy read tables without importing the CLI. No I/O except :func:`read_file`.
"""

from __future__ import annotations

import difflib
import enum
import re
import tomllib
from collections.abc import Iterator, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final, TypeVar, overload

from wonders.errors import ConfigError

__all__ = ["REQUIRED", "Table", "describe", "parse_size", "read_file"]

_T = TypeVar("_T")


class _Required(enum.Enum):
    REQUIRED = "required"


#: The default of a getter for a key that must be present (the getters' own default).
REQUIRED: Final = _Required.REQUIRED

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_UNITS: Final = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                 "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_EXPECTED: Final = 'a byte count (e.g. 10485760 or "10 MiB")'
_SHOWN = 60  # characters of a found value a message shows


def parse_size(text: str) -> int:
    """``"10 MiB"``, ``"2.5 GB"``, ``"512"``: a byte count with an optional SI or binary
    unit. Raises ValueError for anything else."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a byte count")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").lower()])


def describe(value: object) -> str:
    """A value found in a file, as a message shows it: TOML's spelling (``true``, a quoted
    string, ``[1, 2]``), a table as "a table", cut to a line's share."""
    shown = _render(value)
    return shown if len(shown) <= _SHOWN else shown[: _SHOWN - 1] + "…"


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _key_text(key: str) -> str:
    """A key as a message shows it: as written, unless it holds characters that could
    break the line (a quoted TOML key can hold anything)."""
    return key if key.isprintable() else repr(key)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_file(path: Path, *, what: str = "config file", hint: str = "",
              error: type[ConfigError] = ConfigError) -> str:
    """The text of ``path``; a missing or unreadable file is one ``error`` line
    (``{path}: no such {what}{hint}``, ``{path}: cannot read {what}: …``)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {what}{hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None


class Table:
    """One TOML table of a file, read strictly (see the module docstring).

    Attributes:
        source: the file, as messages name it.
        name: the table's dotted name in the file ("" for the top level).
        base: the directory relative paths are resolved against.
    """

    def __init__(self, data: dict[str, Any], *, keys: Sequence[str] | None,
                 source: str | Path, name: str = "", base: Path | None = None,
                 error: type[ConfigError] = ConfigError) -> None:
        self.source = str(source)
        self.name = name
        self.base = base if base is not None else Path(".")
        self._data = data
        self._keys = tuple(keys) if keys is not None else None
        self._error = error
        self._read: set[str] = set()
        self._children: list[Table] = []
        if self._keys is not None:
            for key in data:
                if key not in self._keys:
                    close = difflib.get_close_matches(key, self._keys, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise self.fail(key, f"unknown key{hint}; known keys: "
                                         f"{', '.join(self._keys)}")

    @classmethod
    def parse(cls, text: str, *, keys: Sequence[str] | None, source: str | Path,
              base: Path | None = None, error: type[ConfigError] = ConfigError) -> Table:
        """The top-level table of TOML ``text``."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise error(f"{source}: not valid TOML: {exc}") from None
        return cls(data, keys=keys, source=source, base=base, error=error)

    @classmethod
    def load(cls, path: Path, *, keys: Sequence[str] | None, what: str = "config file",
             hint: str = "", error: type[ConfigError] = ConfigError) -> Table:
        """The top-level table of the file at ``path`` (relative paths in it are relative
        to its directory)."""
        text = read_file(path, what=what, hint=hint, error=error)
        return cls.parse(text, keys=keys, source=path, base=path.parent, error=error)

    # -------------------------------------------------------------------------- errors

    def dotted(self, key: str) -> str:
        """``key``'s full name in the file (``audit.spool``, ``clients.gpu01.allow[1]``)."""
        key = _key_text(key)
        return f"{self.name}.{key}" if self.name else key

    def fail(self, key: str | None, problem: str) -> ConfigError:
        """The error to raise for ``key`` (None: the table itself), one line."""
        where = self.dotted(key) if key is not None else self.name
        return self._error(f"{self.source}: {where}: {problem}" if where
                           else f"{self.source}: {problem}")

    def wrong(self, key: str, expected: str, value: object) -> ConfigError:
        """``key: expected …, not …``, showing the value found."""
        return self.fail(key, f"expected {expected}, not {describe(value)}")

    # ------------------------------------------------------------------------- reading

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        """The keys the file holds, in its order (not marked read)."""
        return iter(list(self._data))

    @property
    def read(self) -> frozenset[str]:
        """The keys read so far."""
        return frozenset(self._read)

    def value(self, key: str) -> Any:
        """The raw value of ``key`` (None if absent: TOML has no null), marked read."""
        if self._keys is not None and key not in self._keys:
            raise AssertionError(f"{self.dotted(key)} is not one of the keys {self._keys}")
        self._read.add(key)
        return self._data.get(key)

    def _absent(self, key: str, default: _T | _Required) -> _T:
        if isinstance(default, _Required):
            raise self.fail(key, "missing")
        return default

    @overload
    def string(self, key: str) -> str: ...
    @overload
    def string(self, key: str, default: _T) -> str | _T: ...

    def string(self, key: str, default: object = REQUIRED) -> object:
        """A non-empty string."""
        value = self.value(key)
        if value is None:
            return self._absent(key, default)
        if not isinstance(value, str) or not value:
            raise self.wrong(key, "a non-empty string", value)
        return value

    @overload
    def path(self, key: str) -> Path: ...
    @overload
    def path(self, key: str, default: _T) -> Path | _T: ...

    def path(self, key: str, default: object = REQUIRED) -> object:
        """A file path (``~`` expanded), relative to :attr:`base` unless absolute."""
        value = self.value(key)
        if value is None:
            return self._absent(key, default)
        if not isinstance(value, str) or not value:
            raise self.wrong(key, "a file path", value)
        return self.base / Path(value).expanduser()

    @overload
    def boolean(self, key: str) -> bool: ...
    @overload
    def boolean(self, key: str, default: _T) -> bool | _T: ...

    def boolean(self, key: str, default: object = REQUIRED) -> object:
        value = self.value(key)
        if value is None:
            return self._absent(key, default)
        if not isinstance(value, bool):
            raise self.wrong(key, "true or false", value)
        return value

    @overload
    def integer(self, key: str, *, above: int | None = ..., minimum: int | None = ...,
                expected: str | None = ...) -> int: ...
    @overload
    def integer(self, key: str, default: _T, *, above: int | None = ...,
                minimum: int | None = ..., expected: str | None = ...) -> int | _T: ...

    def integer(self, key: str, default: object = REQUIRED, *, above: int | None = None,
                minimum: int | None = None, expected: str | None = None) -> object:
        """A whole number, over ``above`` or at least ``minimum`` if given; ``expected``
        replaces what a message says is expected."""
        value = self.value(key)
        if value is None:
            return self._absent(key, default)
        if (not _is_int(value) or (above is not None and value <= above)
                or (minimum is not None and value < minimum)):
            raise self.wrong(key, expected or _bounded("a whole number", above, minimum), value)
        return value

    @overload
    def number(self, key: str, *, above: float | None = ..., minimum: float | None = ...,
               expected: str | None = ...) -> float: ...
    @overload
    def number(self, key: str, default: _T, *, above: float | None = ...,
               minimum: float | None = ..., expected: str | None = ...) -> float | _T: ...

    def number(self, key: str, default: object = REQUIRED, *, above: float | None = None,
               minimum: float | None = None, expected: str | None = None) -> object:
        """A number (whole or not; returned as a float), bounded as :meth:`integer`."""
        value = self.value(key)
        if value is None:
            return self._absent(key, default)
        if (not _is_number(value) or (above is not None and value <= above)
                or (minimum is not None and value < minimum)):
            raise self.wrong(key, expected or _bounded("a number", above, minimum), value)
        return float(value)

    @overload
    def size(self, key: str, *, expected: str | None = ...) -> int: ...
    @overload
    def size(self, key: str, default: _T, *, expected: str | None = ...) -> int | _T: ...

    def size(self, key: str, default: object = REQUIRED, *,
             expected: str | None = None) -> object:
        """A byte count: a whole number (0 or more) or a string such as ``"10 MiB"``
        (:func:`parse_size`)."""
        value = self.value(key)
        if value is None:
            return self._absent(key, default)
        if _is_int(value) and value >= 0:
            return value
        if isinstance(value, str):
            try:
                return parse_size(value)
            except ValueError:
                pass
        raise self.wrong(key, expected or _SIZE_EXPECTED, value)

    @overload
    def choice(self, key: str, options: Sequence[str]) -> str: ...
    @overload
    def choice(self, key: str, options: Sequence[str], default: _T) -> str | _T: ...

    def choice(self, key: str, options: Sequence[str], default: object = REQUIRED) -> object:
        """One of the strings ``options``."""
        value = self.value(key)
        if value is None:
            return self._absent(key, default)
        if not isinstance(value, str) or value not in options:
            quoted = [f'"{o}"' for o in options]
            listed = quoted[0] if len(quoted) == 1 else (
                f"{', '.join(quoted[:-1])} or {quoted[-1]}")
            raise self.wrong(key, listed, value)
        return value

    @overload
    def strings(self, key: str) -> list[str]: ...
    @overload
    def strings(self, key: str, default: _T) -> list[str] | _T: ...

    def strings(self, key: str, default: object = REQUIRED) -> object:
        """A list of strings (which may be empty)."""
        value = self.value(key)
        if value is None:
            return self._absent(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.wrong(key, "a list of strings", value)
        return list(value)

    def table(self, key: str, *, keys: Sequence[str] | None,
              required: bool = False) -> Table:
        """The sub-table ``key`` (an empty one if it is absent and not ``required``), read
        as strictly as this one; :meth:`finish` covers it."""
        value = self.value(key)
        if value is None:
            if required:
                raise self.fail(key, "missing")
            value = {}
        if not isinstance(value, dict):
            raise self.wrong(key, "a table", value)
        child = Table(value, keys=keys, source=self.source, name=self.dotted(key),
                      base=self.base, error=self._error)
        self._children.append(child)
        return child

    def finish(self) -> None:
        """Check that every key of this table and of the sub-tables opened from it was
        read. Raises AssertionError (a loader's bug) naming the first key that was not."""
        for key in self._data:
            if key not in self._read:
                raise AssertionError(f"{self.source}: {self.dotted(key)} was never read")
        for child in self._children:
            child.finish()


def _bounded(what: str, above: float | None, minimum: float | None) -> str:
    if above is not None:
        return f"{what} above {above:g}"
    if minimum is not None:
        return f"{what} (at least {minimum:g})"
    return what
