"""Small text helpers shared by the commands. No I/O."""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["human_bytes", "table"]


def human_bytes(n: int) -> str:
    """``532 B``, ``1.2 kB``, ``48.0 MB``, ``3.1 GB`` (powers of 1000)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def table(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """Rows (the header first) as aligned columns two spaces apart; the columns whose
    index is in ``right`` are right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.rjust(width) if i in right else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    )
