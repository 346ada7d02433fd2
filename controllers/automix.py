"""The automix planner: track order through a crate, and where and how each transition happens.

Planning works on what prep stored (docs/analysis.md): the beat grid, downbeats
and phrases, mix-in and mix-out points, key (Camelot), vocal regions, per-stem
loudness. It says *where* in each track a transition starts (beat indices of
the tracks' own grids), *which* preset plays it (controllers/transitions.py),
the tempo path and any key shift; :mod:`controllers.mixsession` turns that into
engine commands, offline or live.

Track order (:func:`order_tracks`)
    A route through the crate that keeps tempo and key moves small and
    follows an energy curve (``steady``, ``build``, ``peak``: up to a peak at
    two thirds, then release). The cost of playing B after A at position i is
    ``TEMPO_WEIGHT × tempo move (%) + KEY_WEIGHT × Camelot steps +
    ENERGY_WEIGHT × |energy(B) − target(i)|``; a greedy route from the first
    track is then improved by 2-opt moves. The first track, a subset or the
    whole order can be fixed.

Transition points (:func:`plan_transition`)
    Candidates are the outgoing track's phrase starts from its mix-out point
    on (and a few before it) that leave room for the whole transition, and
    the incoming track's phrase starts from its mix-in point. Each pair is
    scored by the vocal overlap it would cause (each deck's vocal activity ×
    its vocal stem gain in the preset, second by second) and the distance from
    the analysed mix points. When the default preset would overlap two vocals,
    the vocal-safe one takes over.

Keys
    Compatible on the Camelot wheel: the same key, one step round, or the
    relative major/minor (distance ≤ 1, :func:`prep.key.camelot_distance`).
    Otherwise the incoming track is key-shifted by the smallest number of
    semitones (at most :data:`MAX_KEY_SHIFT`) that makes it compatible (keylock
    keeps the tempo), and failing that a preset that hides the clash
    (``hides_key_clash``: a cut) is used.

Tempo
    ``drift`` (default): the master tempo glides from the outgoing track's
    tempo to the incoming track's over the first half of the transition, so
    the incoming track plays on at its own tempo; ``meet``: both decks meet
    halfway and the incoming track drifts to its own tempo over the next
    :data:`DRIFT_BARS`; ``steady``: the whole mix at one tempo. A move above
    :data:`MAX_BLEND_TEMPO` becomes a cut (beat-matching 10 % apart sounds
    stretched); half and double tempo count as close for the order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from engine.transitions import DEFAULT_TRANSITION, Transition
from prep.key import camelot_distance, shift_camelot
from prep.similarity import tempo_relation

__all__ = ["TrackInfo", "TransitionPlan", "order_tracks", "plan_transition", "energy_targets", "tempo_move",
           "key_shift_for", "track_energy", "ENERGY_CURVES", "TEMPO_POLICIES", "MAX_KEY_SHIFT", "MAX_BLEND_TEMPO",
           "DRIFT_BARS", "MIN_SOLO_BARS"]

ENERGY_CURVES = ("steady", "build", "peak")
TEMPO_POLICIES = ("drift", "meet", "steady")
MAX_KEY_SHIFT = 2
"""Semitones the planner may shift an incoming track to reach a compatible key."""
MAX_BLEND_TEMPO = 0.08
"""Largest tempo move (a fraction) that a blend absorbs; larger moves are cut."""
DRIFT_BARS = 16
"""Bars over which the incoming track drifts to its own tempo after a ``meet`` transition."""
MIN_SOLO_BARS = 16
"""Bars each track plays on its own between two transitions, at least."""
TEMPO_WEIGHT = 1.0        # per % of tempo move
KEY_WEIGHT = 2.5          # per Camelot step beyond a compatible key
ENERGY_WEIGHT = 6.0       # per unit (0..1) of energy away from the curve
FIRST_CANDIDATES = 8
"""First tracks tried when the user fixes none."""
VOCAL_SAFE_TRANSITION = "vocal-safe"
CUT_TRANSITION = "quick-cut"


@dataclass(frozen=True)
class TrackInfo:
    """What the planner knows of one track (from the crate's analysis record).

    Attributes
    ----------
    content_hash, title, artist : str
    duration_s : float
    bpm : float
        Mean tempo of the grid.
    beats_s : ndarray
        Beat times, seconds (index = the engine's beat number of the track).
    beats_per_bar : int
    downbeat_beats : ndarray of int
        Beat indices of the downbeats.
    phrase_beats : ndarray of int
        Beat indices of the phrase starts (downbeats).
    mix_in_beat, mix_out_beat : int
        Beat indices of the analysed mix-in and mix-out points.
    camelot, key : str
    vocal_regions_s : list of (float, float)
    lufs : float
    energy : float
        0 (calm) .. 1 (intense), :func:`track_energy`.
    """

    content_hash: str
    title: str
    artist: str
    duration_s: float
    bpm: float
    beats_s: np.ndarray
    beats_per_bar: int
    downbeat_beats: np.ndarray
    phrase_beats: np.ndarray
    mix_in_beat: int
    mix_out_beat: int
    camelot: str
    key: str
    vocal_regions_s: tuple = ()
    lufs: float = -14.0
    energy: float = 0.5

    @classmethod
    def from_analysis(cls, track: dict, analysis: dict) -> TrackInfo:
        """Build from a crate row (:meth:`prep.crate.Crate.get_track`) and its analysis record."""
        beats = np.asarray(analysis["beats"], dtype=float)
        if len(beats) < 16:
            raise ValueError(f"{track.get('title')}: too few beats ({len(beats)}) to mix")

        def index(t: float) -> int:
            return int(np.argmin(np.abs(beats - t)))

        downbeats = np.array(sorted({index(t) for t in analysis.get("downbeats") or []}), dtype=int)
        bpb = int(analysis.get("beats_per_bar") or 4)
        if len(downbeats) == 0:
            downbeats = np.arange(0, len(beats), bpb)
        phrases = np.array(sorted({index(p["start"]) for p in analysis.get("phrases") or []}), dtype=int)
        if len(phrases) == 0:
            phrases = downbeats[::8]
        mix_in = _nearest(phrases, index(float(analysis.get("mix_in") or beats[phrases[0]])))
        mix_out = _nearest(phrases, index(float(analysis.get("mix_out") or beats[-1])))
        info = cls(content_hash=track["content_hash"], title=track.get("title") or track["content_hash"][:8],
                   artist=track.get("artist") or "", duration_s=float(analysis.get("duration") or beats[-1]),
                   bpm=float(analysis["bpm"]), beats_s=beats, beats_per_bar=bpb, downbeat_beats=downbeats,
                   phrase_beats=phrases, mix_in_beat=mix_in, mix_out_beat=mix_out,
                   camelot=analysis.get("camelot") or "", key=analysis.get("key") or "",
                   vocal_regions_s=tuple(tuple(r) for r in analysis.get("vocal_regions") or ()),
                   lufs=float(analysis.get("lufs") or -14.0))
        return replace(info, energy=track_energy(analysis))

    @property
    def last_beat(self) -> int:
        return len(self.beats_s) - 1

    def seconds_per_beat(self) -> float:
        return 60.0 / self.bpm

    def vocal_activity(self, start_beat: float, n_beats: int, per_beat: int = 4) -> np.ndarray:
        """1 where the vocals sing, 0 elsewhere, at ``per_beat`` points per beat from ``start_beat``."""
        b = start_beat + np.arange(n_beats * per_beat) / per_beat
        t = np.interp(b, np.arange(len(self.beats_s)), self.beats_s)
        active = np.zeros(len(t))
        for a, e in self.vocal_regions_s:
            active[(t >= a) & (t < e)] = 1.0
        return active


def _nearest(candidates: np.ndarray, beat: int) -> int:
    return int(candidates[np.argmin(np.abs(candidates - beat))])


def track_energy(analysis: dict) -> float:
    """A track's energy, 0..1: half from its tempo (90 → 0, 150 BPM → 1: drum and bass at 174 is intense,
    not "87"), half from how loud its drums are against the whole (per-stem loudness; −12 LU → 0, 0 LU → 1),
    which separates a driving track from a mellow one at one tempo. Without stems, the tempo alone."""
    bpm = float(analysis.get("bpm") or 120.0)
    tempo = min(max((bpm - 90.0) / 60.0, 0.0), 1.0)
    stems = analysis.get("stem_lufs") or {}
    drums, mix = stems.get("drums"), analysis.get("lufs")
    if drums is None or mix is None or drums <= -69.0:
        return tempo
    drive = min(max((drums - mix + 12.0) / 12.0, 0.0), 1.0)
    return 0.5 * tempo + 0.5 * drive


def tempo_move(from_bpm: float, to_bpm: float) -> float:
    """The tempo move from one track to the next as a fraction, half and double tempo understood (|…|): how far
    apart they are for the route (:func:`prep.similarity.tempo_relation`). A transition between them is
    still a cut: sync follows beats one to one."""
    _, pct, _ = tempo_relation(from_bpm, to_bpm)
    return abs(pct) / 100.0


def key_shift_for(out_camelot: str, in_camelot: str, max_shift: int = MAX_KEY_SHIFT) -> int | None:
    """Semitones to shift the incoming key to mix with the outgoing one: 0 when compatible, None when no shift
    up to ``max_shift`` makes it compatible. Smallest shift first, up before down at equal size."""
    if not out_camelot or not in_camelot:
        return 0
    for s in sorted(range(-max_shift, max_shift + 1), key=lambda s: (abs(s), -s)):
        if camelot_distance(out_camelot, shift_camelot(in_camelot, s)) <= 1:
            return s
    return None


def energy_targets(curve: str, n: int, low: float = 0.2, high: float = 0.9) -> np.ndarray:
    """The energy wanted at each of ``n`` positions: ``steady`` (nan: no target), ``build`` (low → high),
    ``peak`` (low → high at two thirds → back to the middle)."""
    if curve not in ENERGY_CURVES:
        raise ValueError(f"energy curve must be one of {', '.join(ENERGY_CURVES)}, got {curve!r}")
    x = np.linspace(0.0, 1.0, max(n, 1))
    if curve == "steady":
        return np.full(n, np.nan)
    if curve == "build":
        return low + (high - low) * x
    peak = 2.0 / 3.0
    rise = low + (high - low) * x / peak
    fall = high - (high - (low + high) / 2.0) * (x - peak) / (1.0 - peak)
    return np.where(x <= peak, rise, fall)


def _pair_cost(a: TrackInfo, b: TrackInfo) -> float:
    tempo_pct = 100.0 * tempo_move(a.bpm, b.bpm)
    key = 0.0
    if a.camelot and b.camelot:
        key = max(camelot_distance(a.camelot, b.camelot) - 1, 0)
    meter = 10.0 if a.beats_per_bar != b.beats_per_bar else 0.0
    return TEMPO_WEIGHT * tempo_pct + KEY_WEIGHT * key + meter


def _route_cost(route: list[TrackInfo], targets: np.ndarray) -> float:
    cost = sum(_pair_cost(a, b) for a, b in zip(route, route[1:]))
    for t, target in zip(route, targets):
        if not math.isnan(target):
            cost += ENERGY_WEIGHT * abs(t.energy - target)
    return cost


def order_tracks(tracks: list[TrackInfo], curve: str = "steady", first: TrackInfo | None = None,
                 fixed: list[TrackInfo] | None = None) -> list[TrackInfo]:
    """A route through ``tracks`` (see the module docstring).

    Parameters
    ----------
    tracks : list of TrackInfo
        The tracks to order (a subset of the crate, when the user chose one).
    curve : str
        Energy curve, one of :data:`ENERGY_CURVES`.
    first : TrackInfo, optional
        Start with this track.
    fixed : list of TrackInfo, optional
        The whole order, as given: returned unchanged.
    """
    if fixed is not None:
        return list(fixed)
    if not tracks:
        return []
    targets = energy_targets(curve, len(tracks))
    if first is not None:
        return _route_from(first, tracks, targets)
    # Try several first tracks (those nearest where the curve starts, or the most central ones for a steady
    # curve) and keep the cheapest route.
    if curve == "steady":
        rank = sorted(tracks, key=lambda t: sum(_pair_cost(t, u) for u in tracks))
    else:
        rank = sorted(tracks, key=lambda t: abs(t.energy - targets[0]))
    routes = [_route_from(t, tracks, targets) for t in rank[:FIRST_CANDIDATES]]
    return min(routes, key=lambda r: _route_cost(r, targets))


def _route_from(first: TrackInfo, tracks: list[TrackInfo], targets: np.ndarray) -> list[TrackInfo]:
    route = [first]
    left = [t for t in tracks if t is not first]
    while left:
        i = len(route)
        target = targets[i] if i < len(targets) else math.nan

        def cost(t: TrackInfo) -> float:
            c = _pair_cost(route[-1], t)
            return c + (0.0 if math.isnan(target) else ENERGY_WEIGHT * abs(t.energy - target))

        nxt = min(left, key=cost)
        route.append(nxt)
        left.remove(nxt)
    return _two_opt(route, targets)


def _two_opt(route: list[TrackInfo], targets: np.ndarray, max_rounds: int = 20) -> list[TrackInfo]:
    best = _route_cost(route, targets)
    n = len(route)
    for _ in range(max_rounds):
        improved = False
        for i in range(1, n - 1):                 # the first track stays first
            for j in range(i + 1, n):
                candidate = route[:i] + route[i:j + 1][::-1] + route[j + 1:]
                c = _route_cost(candidate, targets)
                if c < best - 1e-9:
                    route, best, improved = candidate, c, True
        if not improved:
            break
    return route


@dataclass
class TransitionPlan:
    """Where and how one transition happens.

    Attributes
    ----------
    out_track, in_track : TrackInfo
    preset : Transition
        Already at its planned length.
    out_beat, in_beat : int
        Beat indices (of each track's own grid) that sound at bar 0: phrase starts when phrase-aligned.
    key_shift : int
        Semitones applied to the incoming deck.
    in_camelot : str
        The incoming track's key after the shift.
    start_bpm, end_bpm : float
        Master tempo at bar 0 and when the incoming track has taken over.
    tempo_ramp_bars : float
        Bars from bar 0 over which the master tempo glides (0: no glide).
    cut : bool
        A cut: the incoming deck starts unsynced at its own tempo.
    vocal_overlap_bars : float
        Bars during which both vocals sound, predicted from the vocal regions and the preset.
    phrase_aligned : bool
        Both ``out_beat`` and ``in_beat`` are phrase starts of their tracks.
    reasons : list of str
        Why this preset, key shift and tempo path.
    """

    out_track: TrackInfo
    in_track: TrackInfo
    preset: Transition
    out_beat: int
    in_beat: int
    key_shift: int = 0
    in_camelot: str = ""
    start_bpm: float = 120.0
    end_bpm: float = 120.0
    tempo_ramp_bars: float = 0.0
    cut: bool = False
    vocal_overlap_bars: float = 0.0
    phrase_aligned: bool = True
    reasons: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out": self.out_track.title, "in": self.in_track.title, "out_hash": self.out_track.content_hash,
                "in_hash": self.in_track.content_hash, "preset": self.preset.name, "bars": self.preset.bars,
                "out_beat": self.out_beat, "in_beat": self.in_beat, "key_shift": self.key_shift,
                "out_key": self.out_track.camelot, "in_key": self.in_track.camelot, "in_key_played": self.in_camelot,
                "start_bpm": round(self.start_bpm, 3), "end_bpm": round(self.end_bpm, 3),
                "tempo_ramp_bars": self.tempo_ramp_bars, "cut": self.cut,
                "vocal_overlap_bars": round(self.vocal_overlap_bars, 3), "phrase_aligned": self.phrase_aligned,
                "reasons": list(self.reasons)}


def _vocal_overlap_bars(t: Transition, a: TrackInfo, a_beat: int, b: TrackInfo, b_beat: int) -> float:
    """Bars of the transition during which both tracks sing with their vocal stems up."""
    bpb = a.beats_per_bar
    n_beats = t.bars * bpb
    per_beat = 4
    va = a.vocal_activity(a_beat, n_beats, per_beat)
    vb = b.vocal_activity(b_beat, n_beats, per_beat)
    bars = np.arange(n_beats * per_beat) / (per_beat * bpb)
    ga = np.array([t.value("out", "stem.vocals", x) * t.value("out", "volume", x) for x in bars])
    gb = np.array([t.value("in", "stem.vocals", x) * t.value("in", "volume", x) if x >= t.in_start_bar else 0.0
                   for x in bars])
    both = (va * ga > 0.05) & (vb * gb > 0.05)
    return float(both.sum()) / (per_beat * bpb)


def _candidates(track: TrackInfo, around: int, need_beats: int, after: int, role: str) -> list[int]:
    """Phrase starts usable for a transition of ``need_beats`` beats: from ``after`` on, room left to play it."""
    phrases = [int(p) for p in track.phrase_beats if p >= after and p + need_beats <= track.last_beat]
    if role == "out":
        # From a little before the analysed mix-out on; later is fine as long as the track lasts.
        near = [p for p in phrases if p >= around - 16 * track.beats_per_bar] or phrases[-3:]
        return sorted(near, key=lambda p: abs(p - around))[:6]
    near = [p for p in phrases if p >= around] or phrases[:1]
    return sorted(near)[:3]


def plan_transition(a: TrackInfo, b: TrackInfo, library: dict[str, Transition], *, after_beat: int = 0,
                    a_camelot: str | None = None, master_bpm: float | None = None, tempo: str = "drift",
                    preset: str | None = None) -> TransitionPlan | None:
    """Plan the transition from ``a`` (playing) to ``b``.

    Parameters
    ----------
    a, b : TrackInfo
        The outgoing and incoming tracks.
    library : dict
        Transition presets by name (:func:`controllers.transitions.load_library`).
    after_beat : int
        The earliest beat of ``a`` at which the transition may start (where ``a`` is now, plus its solo bars).
    a_camelot : str, optional
        The key ``a`` is played in (after its own key shift); default its analysed key.
    master_bpm : float, optional
        The master tempo when the transition starts (default ``a.bpm``).
    tempo : str
        Tempo policy, one of :data:`TEMPO_POLICIES`.
    preset : str, optional
        Force a preset (a live trigger or ``--transition``); default: the planner's choice.

    Returns
    -------
    TransitionPlan or None
        None when ``a`` has no room left for a transition after ``after_beat``.
    """
    if tempo not in TEMPO_POLICIES:
        raise ValueError(f"tempo policy must be one of {', '.join(TEMPO_POLICIES)}, got {tempo!r}")
    reasons: list[str] = []
    start_bpm = master_bpm or a.bpm
    move = abs(b.bpm / start_bpm - 1.0)        # what the stretcher would do: no half or double tempo
    a_key = a_camelot if a_camelot is not None else a.camelot
    shift = key_shift_for(a_key, b.camelot)
    clash = shift is None
    if clash:
        shift = 0
        reasons.append(f"keys {a_key} and {b.camelot} do not mix, even shifted ±{MAX_KEY_SHIFT}")
    elif shift:
        reasons.append(f"key shift {shift:+d} st: {b.camelot} → {shift_camelot(b.camelot, shift)} next to {a_key}")
    cut = (move > MAX_BLEND_TEMPO and tempo != "steady") or a.beats_per_bar != b.beats_per_bar
    if move > MAX_BLEND_TEMPO and tempo != "steady":
        reasons.append(f"tempo {start_bpm:.1f} → {b.bpm:.1f} BPM ({100 * move:.0f} %) is too far to blend")
    if a.beats_per_bar != b.beats_per_bar:
        reasons.append(f"meters {a.beats_per_bar}/4 and {b.beats_per_bar}/4 do not blend")
    if preset is not None:
        if preset not in library:
            raise ValueError(f"unknown transition {preset!r}; known: {', '.join(sorted(library))}")
        names = [preset]
    elif cut or clash:
        names = [n for n, t in library.items() if t.hides_key_clash] or [CUT_TRANSITION]
    else:
        names = [DEFAULT_TRANSITION] + ([VOCAL_SAFE_TRANSITION] if VOCAL_SAFE_TRANSITION in library else [])
    best = None
    for name in names:
        t0 = library[name]
        for bars in range(t0.bars, t0.min_bars - 1, -max(1, (t0.bars - t0.min_bars) // 2 or 1)):
            t = t0.with_bars(bars)
            need = (t.bars + t.tail_bars) * a.beats_per_bar
            # The incoming track drops on a phrase start of the outgoing one: a preset whose incoming deck starts
            # after bar 0 (an echo out) begins that many bars before the phrase.
            lead = int(round(t.in_start_bar * a.beats_per_bar))
            outs = [p - lead for p in _candidates(a, a.mix_out_beat, int(need) - lead, after_beat + lead, "out")]
            ins = _candidates(b, b.mix_in_beat, int(need + MIN_SOLO_BARS * b.beats_per_bar), 0, "in")
            for ob in outs:
                for ib in ins:
                    vocal = _vocal_overlap_bars(t, a, ob, b, ib)
                    cost = (8.0 * vocal + abs(ob - a.mix_out_beat) / (8.0 * a.beats_per_bar)
                            + (ib - b.mix_in_beat) / (4.0 * b.beats_per_bar) + 0.5 * (t0.bars - bars) / t0.bars
                            + (0.25 if name != names[0] else 0.0))
                    if best is None or cost < best[0]:
                        best = (cost, t, ob, ib, vocal)
    if best is None:
        return None
    _, t, ob, ib, vocal = best
    drop = ob + int(round(t.in_start_bar * a.beats_per_bar))
    cut = cut or t.bars <= 1         # a one-bar cut: the incoming track plays at its own tempo from the cut
    if t.name == VOCAL_SAFE_TRANSITION and preset is None:
        reasons.append("both tracks sing in the transition: the vocals change hands on the swap")
    end_bpm = b.bpm
    ramp_bars = 0.0
    if cut:
        end_bpm = b.bpm
    elif tempo == "steady":
        end_bpm = start_bpm
    elif tempo == "meet":
        end_bpm = 0.5 * (start_bpm + b.bpm)
        ramp_bars = t.swap_bar if t.swap_bar else t.bars / 2.0
    else:
        end_bpm = b.bpm
        ramp_bars = t.swap_bar if t.swap_bar else t.bars / 2.0
    if not cut and abs(end_bpm - start_bpm) > 1e-6:
        reasons.append(f"tempo {start_bpm:.2f} → {end_bpm:.2f} BPM over {ramp_bars:g} bars ({tempo})")
    return TransitionPlan(out_track=a, in_track=b, preset=t, out_beat=ob, in_beat=ib, key_shift=int(shift),
                          in_camelot=shift_camelot(b.camelot, shift) if b.camelot else "", start_bpm=start_bpm,
                          end_bpm=end_bpm, tempo_ramp_bars=ramp_bars, cut=cut, vocal_overlap_bars=vocal,
                          phrase_aligned=drop in set(a.phrase_beats.tolist()) and ib in set(b.phrase_beats.tolist()),
                          reasons=reasons)
