"""A scrolling waveform around the playhead, drawn with Unicode block characters.

The engine sends each track's per-stem peaks once (``{"request": "track"}``:
0-255 at ``waveform_rate_hz`` points per second) with its beat grid.
:class:`TrackView` keeps them as numpy arrays; :func:`render_waveform` turns
the window ``position ± span`` into text rows — one column per time slice,
eighth-block characters for the level, the colour of the loudest stem — and a
marker row: beats, downbeats (stronger), phrase starts (distinct), the cue
point, hot cues and the active loop. The playhead is the middle column.

It is a pure function of (track, position, width), so a slow terminal only
draws fewer of these frames; nothing waits on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

__all__ = ["TrackView", "render_waveform", "STEM_COLOURS", "Waveform"]

STEM_COLOURS = {"drums": "#e5c07b", "bass": "#e06c75", "vocals": "#56b6c2", "other": "#98c379", "mix": "#61afef"}
"""Colour of each stem's waveform (a column takes the colour of its loudest stem)."""
_BLOCKS = " ▁▂▃▄▅▆▇█"


@dataclass
class TrackView:
    """A deck's track as the TUI draws it (built from a ``{"request": "track"}`` reply).

    Attributes
    ----------
    title : str
    seconds : float
        Track length, seconds.
    stems : list of str
        Stem names, in the order of the rows of ``peaks``.
    peaks : np.ndarray
        float32 ``(n_stems, points)``, 0..1 of full scale.
    rate_hz : float
        Points per second of ``peaks``.
    total, dominant : np.ndarray
        Per point: the summed level (clipped to 1) and the index of the loudest stem.
    beats_s, downbeats_s, phrases_s : np.ndarray
        Grid times, seconds (track time).
    cue_s : float
        The track's cue point, seconds.
    """

    title: str = ""
    seconds: float = 0.0
    stems: list = field(default_factory=list)
    peaks: np.ndarray = field(default_factory=lambda: np.zeros((1, 0), np.float32))
    rate_hz: float = 50.0
    total: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    dominant: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    beats_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    downbeats_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    phrases_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cue_s: float = 0.0

    @classmethod
    def from_reply(cls, track: dict) -> TrackView:
        """Build from the ``track`` of a ``{"request": "track"}`` reply (runs in a worker thread)."""
        wave = track.get("waveform") or {}
        stems = list(wave) or ["mix"]
        if wave:
            peaks = np.asarray([wave[s] for s in stems], np.float32) / 255.0
        else:
            peaks = np.zeros((1, 0), np.float32)
        return cls(title=str(track.get("title") or ""), seconds=float(track.get("seconds") or 0.0), stems=stems,
                   peaks=peaks, rate_hz=float(track.get("waveform_rate_hz") or 50.0),
                   total=np.minimum(peaks.sum(axis=0), 1.0) if peaks.size else np.zeros(0, np.float32),
                   dominant=peaks.argmax(axis=0) if peaks.size else np.zeros(0, np.int64),
                   beats_s=np.asarray(track.get("beats_s") or [], np.float64),
                   downbeats_s=np.asarray(track.get("downbeats_s") or [], np.float64),
                   phrases_s=np.asarray(track.get("phrases_s") or [], np.float64),
                   cue_s=float(track.get("cue_s") or 0.0))


def _columns(times: np.ndarray, t0: float, step_s: float, width: int) -> np.ndarray:
    """Column index of each time inside the window (the others are dropped)."""
    if not len(times):
        return np.zeros(0, np.int64)
    cols = np.floor((times - t0) / step_s).astype(np.int64)
    return cols[(cols >= 0) & (cols < width)]


def render_waveform(view: TrackView | None, position_s: float, width: int, rows: int = 3, span_s: float = 4.0,
                    hot_cues_s: list | None = None, loop_s: tuple[float, float] | None = None) -> Text:
    """The waveform window around ``position_s`` as ``rows`` text rows plus a marker row.

    Parameters
    ----------
    view : TrackView or None
        The track (None: an empty window).
    position_s : float
        Playhead, seconds of track time; drawn in the middle column.
    width : int
        Columns.
    rows : int
        Rows of waveform (each has 8 levels).
    span_s : float
        Seconds shown either side of the playhead.
    hot_cues_s : list of float or None, optional
        Hot cue times (None for an empty slot), seconds; drawn as their numbers.
    loop_s : (float, float), optional
        The active loop, seconds; shaded on the marker row.

    Returns
    -------
    rich.text.Text
        ``rows + 1`` lines.
    """
    width = max(3, int(width))
    mid = width // 2
    step_s = 2.0 * span_s / width
    t0 = position_s - mid * step_s - step_s / 2.0
    out = Text(no_wrap=True, overflow="crop")
    levels = np.zeros(width)
    colour_of = ["#888888"] * width
    if view is not None and view.total.size:
        n = view.total.size
        edges = np.floor((t0 + np.arange(width + 1) * step_s) * view.rate_hz).astype(np.int64)
        for c in range(width):
            a, b = edges[c], max(edges[c + 1], edges[c] + 1)
            if b <= 0 or a >= n:
                continue
            a, b = max(a, 0), min(b, n)
            seg = view.total[a:b]
            k = int(seg.argmax())
            levels[c] = float(seg[k])
            colour_of[c] = STEM_COLOURS.get(view.stems[int(view.dominant[a + k])], "#61afef")
    # Eighths of a row; sqrt so quiet passages still show (peaks are linear amplitude).
    eighths = np.round(np.sqrt(levels) * rows * 8).astype(int)
    for r in range(rows):
        floor = (rows - 1 - r) * 8
        for c in range(width):
            fill = int(min(8, max(0, eighths[c] - floor)))
            style = colour_of[c] if c > mid else f"{colour_of[c]} dim"
            if c == mid:
                style = "bold white on #5c6370"
            out.append(_BLOCKS[fill] if fill or c != mid else "│", style)
        out.append("\n")
    marks = ["─"] * width
    styles = ["#3e4451"] * width
    if loop_s is not None:
        for c in _columns(np.arange(loop_s[0], loop_s[1], step_s / 2.0), t0, step_s, width):
            styles[c] = "#3e4451 on #1f4f7a"
    if view is not None:
        for kind, times, ch, style in (("beat", view.beats_s, "╷", "#7f848e"),
                                       ("down", view.downbeats_s, "┃", "bold white"),
                                       ("phrase", view.phrases_s, "◆", "bold #c678dd")):
            for c in _columns(times, t0, step_s, width):
                marks[c] = ch
                styles[c] = style + (" on #1f4f7a" if "on #1f4f7a" in styles[c] else "")
        for c in _columns(np.asarray([view.cue_s]), t0, step_s, width):
            marks[c], styles[c] = "C", "bold black on #e5c07b"
    for i, cue in enumerate(hot_cues_s or []):
        if cue is not None:
            for c in _columns(np.asarray([float(cue)]), t0, step_s, width):
                marks[c], styles[c] = str(i + 1), "bold black on #98c379"
    marks[mid], styles[mid] = "▲", "bold white"
    for ch, style in zip(marks, styles):
        out.append(ch, style)
    return out


class Waveform(Widget):
    """The scrolling waveform of one deck; redraws when the playhead, track or cues change."""

    position_s: reactive[float] = reactive(0.0)
    view: reactive[TrackView | None] = reactive(None, always_update=True)
    hot_cues_s: reactive[tuple] = reactive(())
    loop_s: reactive[tuple | None] = reactive(None)

    def __init__(self, rows: int = 3, span_s: float = 4.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows = rows
        self.span_s = span_s

    def render(self) -> Text:
        pos = self.position_s if math.isfinite(self.position_s) else 0.0
        return render_waveform(self.view, pos, self.size.width, self.rows, self.span_s, list(self.hot_cues_s),
                               self.loop_s)
