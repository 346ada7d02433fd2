"""The crate browser: plain functions that sort and filter track rows, and the widget that shows them.

The rows are the dicts of :meth:`prep.crate.Crate.list_tracks` (``title``,
``bpm``, ``key``, ``camelot``, ``duration_s``, ``path``, ``content_hash``...).
Sorting and filtering are pure functions over lists of dicts so they can be
tested without a terminal; :class:`CrateBrowser` only holds the current
choices (sort, text, BPM range, harmonic) and redraws its table from them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable, Input, Static

from prep.key import camelot_neighbours

__all__ = ["SORTS", "BPM_TOLERANCE", "load_crate_tracks", "sort_tracks", "filter_tracks", "harmonic_keys",
           "format_duration", "CrateBrowser"]

SORTS = ("title", "bpm", "key")
"""Sort orders the browser offers (``key`` sorts round the Camelot wheel: 1A, 1B, 2A...)."""
BPM_TOLERANCE = 0.06
"""Half-width of the BPM-range filter, as a fraction of the reference tempo (a pitch fader's usual ±6 %)."""


def load_crate_tracks(crate_dir: str | Path) -> list[dict]:
    """All tracks of a prepared crate, opened read-only (the prep may be writing it meanwhile).

    Returns an empty list when the folder has no crate database yet.
    """
    from prep.crate import Crate, default_db_path

    db = default_db_path(Path(crate_dir))
    if not db.exists():
        return []
    with Crate(db, readonly=True, root=crate_dir) as crate:
        return crate.list_tracks("title")


def _camelot_order(code: object) -> tuple[int, str]:
    m = re.fullmatch(r"\s*(1[0-2]|[1-9])\s*([ABab])\s*", str(code or ""))
    return (int(m.group(1)), m.group(2).upper()) if m else (99, "")


def sort_tracks(tracks: list[dict], by: str = "title", descending: bool = False) -> list[dict]:
    """Tracks sorted by ``title``, ``bpm`` or ``key`` (Camelot wheel order); missing values last.

    Parameters
    ----------
    tracks : list of dict
        Crate rows.
    by : str
        One of :data:`SORTS`.
    descending : bool
        Reverse the order (missing values stay last).
    """
    if by not in SORTS:
        raise ValueError(f"unknown sort {by!r}; expected one of {', '.join(SORTS)}")

    def value(t: dict) -> object:
        if by == "bpm":
            bpm = t.get("bpm")
            return None if bpm is None or not math.isfinite(bpm) else float(bpm)
        if by == "key":
            order = _camelot_order(t.get("camelot"))
            return None if order[0] == 99 else order
        return str(t.get("title") or "").casefold()

    present = [t for t in tracks if value(t) is not None]
    missing = [t for t in tracks if value(t) is None]
    # Title is the tie-break, so equal BPMs or keys keep a stable, readable order.
    present.sort(key=lambda t: str(t.get("title") or "").casefold())
    present.sort(key=value, reverse=descending)
    return present + missing


def harmonic_keys(camelot: str | None) -> set[str] | None:
    """The Camelot codes that mix with ``camelot`` (itself, ±1, relative), or None when it is not a code."""
    try:
        return set(camelot_neighbours(camelot)) if camelot else None
    except ValueError:
        return None


def filter_tracks(tracks: list[dict], text: str = "", bpm: float | None = None,
                  bpm_tolerance: float = BPM_TOLERANCE, camelot: str | None = None) -> list[dict]:
    """The tracks that pass every filter that is set.

    Parameters
    ----------
    tracks : list of dict
        Crate rows.
    text : str
        Words that must all appear (case-insensitive) in the title, artist, key or path.
    bpm : float, optional
        Keep tracks whose BPM is within ``bpm * (1 ± bpm_tolerance)``; tracks
        without a BPM are dropped.
    bpm_tolerance : float
        Fraction of ``bpm``.
    camelot : str, optional
        Keep tracks whose Camelot code is a harmonic neighbour of this one
        (:func:`prep.key.camelot_neighbours`); an unknown code filters nothing.
    """
    words = text.casefold().split()
    keys = harmonic_keys(camelot)
    out = []
    for t in tracks:
        if words:
            hay = " ".join(str(t.get(k) or "") for k in ("title", "artist", "key", "camelot", "path")).casefold()
            if not all(w in hay for w in words):
                continue
        if bpm is not None:
            tb = t.get("bpm")
            if tb is None or not abs(float(tb) - bpm) <= bpm * bpm_tolerance:
                continue
        if keys is not None and str(t.get("camelot") or "").upper() not in keys:
            continue
        out.append(t)
    return out


def format_duration(seconds: float | None) -> str:
    """``m:ss`` (or ``--:--`` when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


class CrateBrowser(Vertical):
    """The tracks of one crate in a table, with a text filter and toggles for BPM range and harmony.

    The app sets :attr:`reference_bpm` and :attr:`reference_camelot` from the
    focused deck; the toggles decide whether they filter.
    """

    _started = False  # set in on_mount: watchers before it have nothing to update

    sort_by: reactive[str] = reactive("title")
    descending: reactive[bool] = reactive(False)
    text: reactive[str] = reactive("")
    bpm_filter: reactive[bool] = reactive(False)
    harmonic_filter: reactive[bool] = reactive(False)
    reference_bpm: reactive[float | None] = reactive(None)
    reference_camelot: reactive[str | None] = reactive(None)

    class LoadRequested(Message):
        """The person chose a track (enter on a row)."""

        def __init__(self, track: dict) -> None:
            super().__init__()
            self.track = track

    def __init__(self, tracks: list[dict] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tracks: list[dict] = list(tracks or [])
        self.shown: list[dict] = []

    def compose(self) -> ComposeResult:
        with Horizontal(id="browser-bar"):
            yield Input(placeholder="filter: words in title / artist / key", id="browser-filter")
            yield Static(id="browser-flags")
        table: DataTable = DataTable(id="browser-table", cursor_type="row", zebra_stripes=True)
        yield table

    def on_mount(self) -> None:
        self._started = True
        table = self.query_one(DataTable)
        table.add_column("Title", key="title", width=36)
        table.add_column("BPM", key="bpm", width=7)
        table.add_column("Key", key="key", width=10)
        table.add_column("Cam", key="camelot", width=4)
        table.add_column("Time", key="duration", width=6)
        # No blinking cursor: it would make screenshots differ and costs redraws for nothing.
        self.border_title = "Crate"
        self.query_one(Input).cursor_blink = False
        self.refresh_rows()

    def set_tracks(self, tracks: list[dict]) -> None:
        """Replace the crate's rows (after a rescan)."""
        self.tracks = list(tracks)
        self.refresh_rows()

    def visible_tracks(self) -> list[dict]:
        """The rows the current filters and sort let through, in table order."""
        bpm = self.reference_bpm if self.bpm_filter else None
        camelot = self.reference_camelot if self.harmonic_filter else None
        rows = filter_tracks(self.tracks, self.text, bpm=bpm, camelot=camelot)
        return sort_tracks(rows, self.sort_by, self.descending)

    def refresh_rows(self) -> None:
        """Redraw the table and the flags line from the current choices."""
        if not self._started or not self.query(DataTable):
            return
        table = self.query_one(DataTable)
        self.shown = self.visible_tracks()
        table.clear()
        for i, t in enumerate(self.shown):
            bpm = t.get("bpm")
            table.add_row(str(t.get("title") or ""), f"{bpm:6.1f}" if bpm else "  -", str(t.get("key") or "-"),
                          str(t.get("camelot") or "-"), format_duration(t.get("duration_s")), key=str(i))
        arrow = "↓" if self.descending else "↑"
        bpm = (f"BPM ±{BPM_TOLERANCE:.0%} of {self.reference_bpm:.1f}" if self.reference_bpm
               else "BPM ±6% (no deck BPM)") if self.bpm_filter else "BPM: all"
        harm = (f"harmonic with {self.reference_camelot}" if self.reference_camelot
                else "harmonic (no deck key)") if self.harmonic_filter else "keys: all"
        self.query_one("#browser-flags", Static).update(
            f"sort {self.sort_by}{arrow} │ {bpm} │ {harm} │ {len(self.shown)}/{len(self.tracks)}")

    def _changed(self, *_: object) -> None:
        self.refresh_rows()

    watch_sort_by = watch_descending = watch_text = watch_bpm_filter = watch_harmonic_filter = _changed

    def watch_reference_bpm(self) -> None:
        if self.bpm_filter:
            self.refresh_rows()

    def watch_reference_camelot(self) -> None:
        if self.harmonic_filter:
            self.refresh_rows()

    def sort(self, by: str) -> None:
        """Sort by ``by``; choosing the current sort again reverses it."""
        if by == self.sort_by:
            self.descending = not self.descending
        else:
            self.sort_by, self.descending = by, False

    def selected_track(self) -> dict | None:
        """The row under the table's cursor, or None."""
        table = self.query_one(DataTable)
        if not self.shown or not 0 <= table.cursor_row < len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.text = event.value

    def on_input_submitted(self, event: Input.Submitted) -> None:
        # Enter in the filter goes back to the table, ready to pick a row.
        event.stop()
        self.query_one(DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        track = self.selected_track()
        if track is not None:
            self.post_message(self.LoadRequested(track))
