"""The crate browser: plain functions that sort and filter track rows, and the widget that shows them.

The rows are the dicts of :meth:`prep.crate.Crate.list_tracks` (``title``,
``bpm``, ``key``, ``camelot``, ``duration_s``, ``path``, ``content_hash``...).
Sorting and filtering are pure functions over lists of dicts so they can be
tested without a terminal; :class:`CrateBrowser` only holds the current
choices (sort, text, BPM range, harmonic) and redraws its table from them.

In suggestion mode (:meth:`CrateBrowser.toggle_suggestions`) the list holds the
tracks :mod:`prep.similarity` suggests after the reference track (the focused
deck's, else the playing deck's), best first, with the score and the reason in
their own columns; the other filters still apply.
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
SUGGESTIONS = 100
"""How many suggestions the browser lists at most."""
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
    suggest_mode: reactive[bool] = reactive(False)
    reference_bpm: reactive[float | None] = reactive(None)
    reference_camelot: reactive[str | None] = reactive(None)
    reference_path: reactive[str | None] = reactive(None)

    class LoadRequested(Message):
        """The person chose a track (enter on a row)."""

        def __init__(self, track: dict) -> None:
            super().__init__()
            self.track = track

    def __init__(self, tracks: list[dict] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tracks: list[dict] = list(tracks or [])
        self.shown: list[dict] = []
        self.suggester = None          # a prep.similarity.Suggester, made on the first toggle
        self.suggestions: dict[str, object] = {}   # content hash -> Suggestion, for the reference track
        self._columns_for: bool | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="browser-bar"):
            yield Input(placeholder="filter: words in title / artist / key", id="browser-filter")
            yield Static(id="browser-flags")
        table: DataTable = DataTable(id="browser-table", cursor_type="row", zebra_stripes=True)
        yield table

    def on_mount(self) -> None:
        self._started = True
        # No blinking cursor: it would make screenshots differ and costs redraws for nothing.
        self.border_title = "Crate"
        self.query_one(Input).cursor_blink = False
        self.refresh_rows()

    def set_tracks(self, tracks: list[dict]) -> None:
        """Replace the crate's rows (after a rescan)."""
        self.tracks = list(tracks)
        self._update_suggestions()
        self.refresh_rows()

    def visible_tracks(self) -> list[dict]:
        """The rows the current filters and sort let through, in table order (by score in suggestion mode)."""
        bpm = self.reference_bpm if self.bpm_filter else None
        camelot = self.reference_camelot if self.harmonic_filter else None
        rows = filter_tracks(self.tracks, self.text, bpm=bpm, camelot=camelot)
        if self.suggest_mode:
            ranked = [t for t in rows if t.get("content_hash") in self.suggestions]
            return sorted(ranked, key=lambda t: -self.suggestions[t["content_hash"]].score)
        return sort_tracks(rows, self.sort_by, self.descending)

    def toggle_suggestions(self, crate_dir: str | Path | None) -> None:
        """Suggestion mode on / off: the tracks to play after the reference track, best first, with reasons."""
        if self.suggester is None and crate_dir is not None:
            from prep.similarity import Suggester

            self.suggester = Suggester(crate_dir)
        self.suggest_mode = not self.suggest_mode

    def _update_suggestions(self) -> None:
        # Only when the mode, the reference or the crate changes: a query per keystroke would cost a large crate.
        self.suggestions = {}
        if not self.suggest_mode or self.suggester is None or not self.reference_path:
            return
        try:
            found = self.suggester.for_track(self.reference_path, n=SUGGESTIONS)
        except Exception:  # noqa: BLE001 - a crate without embeddings yet shows no suggestions, not a crash
            found = []
        self.suggestions = {s.content_hash: s for s in found}

    def _set_columns(self, table: DataTable) -> None:
        if self._columns_for == self.suggest_mode:
            return
        self._columns_for = self.suggest_mode
        table.clear(columns=True)
        table.add_column("Title", key="title", width=36)
        table.add_column("BPM", key="bpm", width=7)
        if self.suggest_mode:
            table.add_column("Cam", key="camelot", width=4)
            table.add_column("Score", key="score", width=5)
            table.add_column("Why", key="reason", width=60)
            return
        table.add_column("Key", key="key", width=10)
        table.add_column("Cam", key="camelot", width=4)
        table.add_column("Time", key="duration", width=6)

    def refresh_rows(self) -> None:
        """Redraw the table and the flags line from the current choices."""
        if not self._started or not self.query(DataTable):
            return
        table = self.query_one(DataTable)
        self._set_columns(table)
        self.shown = self.visible_tracks()
        table.clear()
        for i, t in enumerate(self.shown):
            bpm = t.get("bpm")
            cells = [str(t.get("title") or ""), f"{bpm:6.1f}" if bpm else "  -"]
            if self.suggest_mode:
                s = self.suggestions[t["content_hash"]]
                cells += [str(t.get("camelot") or "-"), f"{s.score:5.2f}", s.reason]
            else:
                cells += [str(t.get("key") or "-"), str(t.get("camelot") or "-"), format_duration(t.get("duration_s"))]
            table.add_row(*cells, key=str(i))
        arrow = "↓" if self.descending else "↑"
        bpm = (f"BPM ±{BPM_TOLERANCE:.0%} of {self.reference_bpm:.1f}" if self.reference_bpm
               else "BPM ±6% (no deck BPM)") if self.bpm_filter else "BPM: all"
        harm = (f"harmonic with {self.reference_camelot}" if self.reference_camelot
                else "harmonic (no deck key)") if self.harmonic_filter else "keys: all"
        sort = f"sort {self.sort_by}{arrow}"
        if self.suggest_mode:
            reference = next((t.get("title") for t in self.tracks if t.get("abs_path") == self.reference_path), None)
            sort = (f"suggested after {reference}" if reference and self.suggestions else
                    f"no suggestions for {reference} (no embeddings? run ate prep)" if reference else
                    "suggestions: no crate track on the decks")
        self.query_one("#browser-flags", Static).update(
            f"{sort} │ {bpm} │ {harm} │ {len(self.shown)}/{len(self.tracks)}")

    def _changed(self, *_: object) -> None:
        self.refresh_rows()

    watch_sort_by = watch_descending = watch_text = watch_bpm_filter = watch_harmonic_filter = _changed
    def watch_suggest_mode(self) -> None:
        self._update_suggestions()
        self.refresh_rows()

    def watch_reference_path(self) -> None:
        if self.suggest_mode:
            self._update_suggestions()
            self.refresh_rows()

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
