"""Readable text for people: one track's analysis, and a crate's track table.

Plain aligned text (no colour codes), so the output pipes and diffs cleanly.
The analysis record's lists (segments, phrases) are drawn tolerantly: they
come from the structure analyser, whose dict fields may grow.
"""

from __future__ import annotations

import math
import sys

GRID_BARS = 4
"""Bars of beat grid drawn under an analysis."""

GRID_COLUMNS_PER_BEAT = 4

TITLE_WIDTH = 40
"""Longer titles (and artists) are cut with an ellipsis in the track table."""

_MAX_LIST_ITEMS = 12


def format_clock(seconds: float | None, decimals: int = 0) -> str:
    """``m:ss`` (or ``m:ss.s`` with ``decimals=1``; ``h:mm:ss`` past an hour); ``-`` for None/NaN."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    sign = "-" if seconds < 0 else ""
    scale = 10**decimals
    units = int(round(abs(seconds) * scale))
    whole, frac = divmod(units, scale)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    if decimals:
        text += f".{frac:0{decimals}d}"
    return sign + text


def _number(value: object, fmt: str, unit: str = "") -> str:
    if value is None:
        return "-"
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return "-inf" + unit if x == -math.inf else "-"
    return format(x, fmt) + unit


def _first(d: dict, names: tuple[str, ...]) -> object:
    for name in names:
        if d.get(name) is not None:
            return d[name]
    return None


def _format_item(item: object) -> str:
    """One segment or phrase as ``label@m:ss.s`` (with its bar count when it has one)."""
    if not isinstance(item, dict):
        return str(item)
    label = _first(item, ("label", "name", "kind", "type", "section"))
    start = _first(item, ("start", "start_s", "time", "t", "onset"))
    bars = _first(item, ("bars", "n_bars", "length_bars"))
    text = str(label) if label is not None else ""
    if isinstance(start, (int, float)):
        text += ("@" if text else "") + format_clock(float(start), 1)
    if isinstance(bars, (int, float)):
        text += f" ({bars:g} bars)"
    return text or "?"


def _format_list(items: list) -> str:
    if not items:
        return "none"
    shown = [_format_item(x) for x in items[:_MAX_LIST_ITEMS]]
    more = f"  (+{len(items) - _MAX_LIST_ITEMS} more)" if len(items) > _MAX_LIST_ITEMS else ""
    return f"{len(items)}: " + "  ".join(shown) + more


def _use_unicode() -> bool:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return encoding.startswith("utf")


def draw_beat_grid(beats: list[float], downbeats: list[float], beats_per_bar: int = 4, bars: int = GRID_BARS,
                   unicode: bool | None = None) -> list[str]:
    """A few text lines picturing the first ``bars`` bars of a beat grid.

    Time runs left to right, :data:`GRID_COLUMNS_PER_BEAT` columns per
    average beat, starting at the first downbeat: a heavy mark per downbeat
    (numbered above), a light mark per beat, dots between. Uneven spacing shows
    as uneven marks.

    Returns
    -------
    list of str
        The bar-number line, the grid line and a time ruler; empty if there are no beats.
    """
    beats = [float(b) for b in beats]
    downbeats = [float(d) for d in downbeats]
    if len(beats) < 2:
        return []
    if unicode is None:
        unicode = _use_unicode()
    down_mark, beat_mark, fill = ("┃", "│", "·") if unicode else ("|", "'", ".")
    start = downbeats[0] if downbeats else beats[0]
    period = (beats[-1] - beats[0]) / (len(beats) - 1)
    if period <= 0:
        return []
    bpb = max(1, int(beats_per_bar or 4))
    columns = bars * bpb * GRID_COLUMNS_PER_BEAT
    seconds_per_column = period / GRID_COLUMNS_PER_BEAT
    end = start + columns * seconds_per_column
    line = [fill] * columns
    numbers = [" "] * (columns + 8)

    def column(t: float) -> int | None:
        c = int(round((t - start) / seconds_per_column))
        return c if 0 <= c < columns else None

    for t in beats:
        if (c := column(t)) is not None:
            line[c] = beat_mark
    for bar, t in enumerate(d for d in downbeats if start - 1e-6 <= d < end):
        if (c := column(t)) is not None:
            line[c] = down_mark
            label = str(bar + 1)
            numbers[c:c + len(label)] = label
    left, right = format_clock(start, 1), format_clock(end, 1)
    ruler = left + " " * max(1, columns - len(left) - len(right)) + right
    return ["".join(numbers).rstrip(), "".join(line), ruler]


def format_analysis(d: dict, unicode: bool | None = None) -> str:
    """The human-readable form of an analysis record (``ate analyze`` without ``--json``).

    Parameters
    ----------
    d : dict
        :meth:`prep.analyze.Analysis.to_dict` (or the same record from the crate).
    unicode : bool, optional
        Draw the beat grid with box-drawing characters; default: when stdout is UTF-8.

    Returns
    -------
    str
        Several lines, no trailing newline.
    """
    beats = d.get("beats") or []
    downbeats = d.get("downbeats") or []
    bpb = d.get("beats_per_bar") or 4
    steady = d.get("steady_tempo")
    tempo = _number(d.get("bpm"), ".2f", " BPM")
    if steady is not None:
        tempo += ", steady" if steady else ", variable tempo"
    tempo += f", {bpb}/4 ({len(beats)} beats, {len(downbeats)} bars)"
    key = str(d.get("key") or "-")
    if d.get("camelot"):
        key += f" ({d['camelot']})"
    if d.get("key_confidence") is not None:
        key += f", confidence {_number(d.get('key_confidence'), '.2f')}"
    rows = [
        ("duration", format_clock(d.get("duration"))),
        ("tempo", tempo),
        ("key", key),
        ("loudness", f"{_number(d.get('lufs'), '.1f', ' LUFS')}, true peak "
                     f"{_number(d.get('true_peak_dbtp'), '.1f', ' dBTP')}"),
        ("mix", f"in {format_clock(d.get('mix_in'), 1)}, out {format_clock(d.get('mix_out'), 1)}"),
        ("segments", _format_list(d.get("segments") or [])),
        ("phrases", _format_list(d.get("phrases") or [])),
    ]
    if d.get("vocal_regions") is not None:
        regions = d["vocal_regions"]
        rows.append(("vocals", ", ".join(f"{format_clock(a)}-{format_clock(b)}" for a, b in regions) or "none"))
    if d.get("stem_lufs"):
        rows.append(("stems", ", ".join(f"{name} {_number(v, '.1f')}" for name, v in d["stem_lufs"].items())
                     + " LUFS"))
    width = max(len(name) for name, _ in rows) + 2
    lines = [str(d.get("path") or "(audio)")]
    lines += [f"  {name:<{width}}{value}" for name, value in rows]
    grid = draw_beat_grid(beats, downbeats, bpb, unicode=unicode)
    if grid:
        lines.append(f"  {'grid':<{width}}{grid[0]}")
        lines += [f"  {'':<{width}}{g}" for g in grid[1:]]
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_track_table(rows: list[dict]) -> str:
    """An aligned table of crate tracks (``ate crate``): title, BPM, key, Camelot, duration, LUFS.

    Parameters
    ----------
    rows : list of dict
        From :meth:`prep.crate.Crate.list_tracks`, in the order to show.

    Returns
    -------
    str
        Header, one line per track and a total line; no trailing newline.
    """
    if not rows:
        return "(no tracks in this crate)"
    with_artist = any(r.get("artist") for r in rows)
    columns: list[tuple[str, str]] = [("#", ">"), ("title", "<")]
    if with_artist:
        columns.append(("artist", "<"))
    columns += [("BPM", ">"), ("key", "<"), ("camelot", ">"), ("duration", ">"), ("LUFS", ">")]
    table = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), _cut(str(r.get("title") or "?"), TITLE_WIDTH)]
        if with_artist:
            cells.append(_cut(str(r.get("artist") or ""), TITLE_WIDTH // 2))
        cells += [_number(r.get("bpm"), ".1f"), str(r.get("key") or "-"), str(r.get("camelot") or "-"),
                  format_clock(r.get("duration_s")), _number(r.get("lufs"), ".1f")]
        table.append(cells)
    widths = [max(len(name), *(len(row[i]) for row in table)) for i, (name, _) in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:{align}{w}}" for c, (_, align), w in zip(cells, columns, widths)).rstrip()

    total_s = sum(float(r.get("duration_s") or 0.0) for r in rows)
    out = [line([name for name, _ in columns])]
    out += [line(cells) for cells in table]
    out.append(f"{len(rows)} track{'s' if len(rows) != 1 else ''}, {format_clock(total_s)} in all")
    return "\n".join(out)
