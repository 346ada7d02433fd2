"""Helpers shared across ATE: environment overrides, one-line error text, and line numbers in TOML files.

The TOML helpers serve files people write (MIDI and transition presets, scripts): :mod:`tomllib` returns
plain dicts without positions, so they find the line of a table or key in the text again, and a check on
the parsed data can say ``FILE:LINE: why``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables inside the block and restore the previous values (or absence) after it."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def one_line(err: BaseException) -> str:
    """``"ExceptionType: first line of the message"``, for reports that keep one line per problem."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


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
        if m:
            return None, int(m.group(1)), str(err)
        # "... (at end of document)": the last line.
        return None, max(len(text.splitlines()), 1) if "end of document" in str(err) else 0, str(err)
