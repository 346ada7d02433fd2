"""Line numbers for errors in TOML files that people write (presets): ``FILE:LINE: why``.

:mod:`tomllib` returns plain dicts without positions; these helpers find the
line of a table or a key in the text again, so that a check on the parsed data
can point at the line to fix.
"""

from __future__ import annotations

import re
import tomllib

__all__ = ["key_line", "table_line", "loads_with_line"]


def table_line(text: str, name: str) -> int:
    """The line (1-based) of ``[name]`` or ``[[name]]``, or 1."""
    pattern = re.compile(rf"^\s*\[\[?\s*{re.escape(name)}\s*\]\]?\s*(#.*)?$")
    return next((i + 1 for i, line in enumerate(text.splitlines()) if pattern.match(line)), 1)


def key_line(text: str, start: int, key: str) -> int:
    """The line of ``key = ...`` (the key bare or quoted) in the table that starts at line ``start`` (or ``start``)."""
    lines = text.splitlines()
    pattern = re.compile(rf"""^(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
    for i in range(start, len(lines)):
        stripped = lines[i].strip()
        if stripped.startswith("["):
            break
        if pattern.match(stripped):
            return i + 1
    return start


def loads_with_line(text: str) -> tuple[dict | None, int, str]:
    """Parse TOML text: ``(data, 0, "")``, or ``(None, line, message)`` for a syntax error."""
    try:
        return tomllib.loads(text), 0, ""
    except tomllib.TOMLDecodeError as err:
        m = re.search(r"line (\d+)", str(err))
        return None, int(m.group(1)) if m else 0, str(err)
