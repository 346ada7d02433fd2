"""One progress bar for long work: a rich bar with count or percentage, rate and ETA, on a terminal only.

Used by ``ate prep`` (tracks), its steps, ``ate separate`` and ``ate render``
(fractions) and automix renders. Off a terminal (pipes, CI, tests) it draws
nothing and costs nothing.
"""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressBar"]


class ProgressBar:
    """A progress bar counting items (``total``) or following a fraction (``total=None``).

    Parameters
    ----------
    label : str
        Shown at the left.
    total : int, optional
        Items to do: :meth:`advance` counts them and the bar shows the rate in ``unit`` per minute.
        None: the bar follows :meth:`fraction` (0..1) and shows a percentage.
    unit : str
        What an item is, for the rate (``"tracks"``).
    note : str
        Text shown before the first item (e.g. how many were skipped).
    enabled : bool, optional
        Default: only when stdout is a terminal.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "items", note: str = "",
                 enabled: bool | None = None):
        self.label = label
        self.total = total
        self.unit = unit
        self.count = 0
        self.started = time.monotonic()
        self.bar = None
        if enabled is None:
            enabled = sys.stdout.isatty()
        if not enabled or total == 0:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        amount = MofNCompleteColumn() if total is not None else TextColumn("{task.percentage:>3.0f}%")
        self.bar = Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(bar_width=30), amount,
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
                            TimeRemainingColumn(), TextColumn("{task.fields[current]}", markup=False))
        self.task = self.bar.add_task(label, total=total if total is not None else 1.0, rate="", current=note)

    def __enter__(self) -> ProgressBar:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    @staticmethod
    def _short(name: str) -> str:
        return name if len(name) <= 40 else "…" + name[-39:]

    def starting(self, name: str) -> None:
        """Show the item being worked on."""
        if self.bar is not None:
            self.bar.update(self.task, current=self._short(name))

    def advance(self, name: str = "") -> None:
        """Count one item done (and show its name)."""
        self.count += 1
        if self.bar is None:
            return
        minutes = max(time.monotonic() - self.started, 1e-6) / 60
        self.bar.update(self.task, advance=1, rate=f"{self.count / minutes:.1f} {self.unit}/min",
                        current=self._short(name))

    def fraction(self, done: float, rate: str = "") -> None:
        """Set the share done, 0..1 (bars made with ``total=None``); ``rate`` is free text (``"41× realtime"``)."""
        if self.bar is not None:
            self.bar.update(self.task, completed=min(1.0, max(0.0, float(done))), rate=rate)

    __call__ = fraction
