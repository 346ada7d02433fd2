"""Similar tracks: a faiss index of the crate's embeddings, next-track suggestions, playlists; ``ate suggest``,
``ate playlist``.

The embeddings (:mod:`prep.embed`) are unit vectors, so the inner product is a cosine similarity; the
index is a faiss ``IndexFlatIP`` (exact) up to :data:`IVF_MIN_ITEMS` tracks and an ``IndexIVFFlat``
(inverted lists, :data:`IVF_NPROBE` probed) above, cached in ``CRATE/.ate/similarity.faiss`` with
``similarity.json`` (the content hashes in index order, a fingerprint of the embeddings table and the
digest of the index file it belongs to). A cache whose fingerprint no longer matches the crate (a track
added, re-embedded or removed), or that cannot be read, is rebuilt on the next use.

A suggestion for the track after ``A`` ranks candidate ``B`` by

    score = 0.5 * similarity + 0.3 * key + 0.2 * tempo          (:data:`BLEND`)

- *similarity*: the cosine of the two embeddings (-1..1);
- *key*: from the Camelot distance (:func:`prep.key.camelot_distance`): 1 the same key, 0.85 one step
  (±1 on the wheel, or the relative major/minor), 0.4 two steps, 0 further; 0.3 when a key is unknown;
- *tempo*: ``1 - |Δ| / 8 %`` (0 beyond a pitch fader's ±8 %), where Δ is the tempo difference after
  halving or doubling the candidate when that brings it closer (87 and 174 BPM are 0 % apart, a half/
  double-tempo mix then scores 0.9 of a straight one).

The candidates are the :data:`POOL` nearest tracks by embedding (all of a small crate); the same
content hash and near-identical embeddings (cosine above :data:`DUPLICATE_COSINE`: the same recording
in another file) are never suggested, and of several files of one recording only the best placed is.
Each suggestion says why, e.g. ``similar drums and harmony; 8A→9A (+1); tempo +1.6 %``: the two parts
of the embedding that agree most (:func:`prep.embed.part_similarity`), the key move and the tempo move.

A playlist grows from seed tracks: their embeddings averaged (the theme), then one track at a time,
the one that best balances the theme and a good transition from the previous track
(``0.5 * cosine(theme) + 0.5 * suggestion score``), never a track already in it or a near-duplicate of
one, and never the previous track's artist while another artist is left. Playlists are saved in the
crate's ``playlists`` / ``playlist_tracks`` tables and exported as M3U.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["BLEND", "POOL", "DUPLICATE_COSINE", "IVF_MIN_ITEMS", "SimilarityError", "SimilarityIndex", "Suggestion",
           "open_index", "key_relation", "tempo_relation", "similarity_reason", "suggest", "suggest_for",
           "make_playlist", "save_playlist", "load_playlist", "write_m3u", "read_m3u", "m3u_path", "Suggester",
           "register_cli"]

BLEND = {"similarity": 0.5, "key": 0.3, "tempo": 0.2}
"""Weights of the suggestion score's three terms."""
KEY_SCORES = {0: 1.0, 1: 0.85, 2: 0.4}
"""Key term by Camelot distance (further: 0)."""
KEY_UNKNOWN = 0.3
"""Key term when either key is unknown."""
TEMPO_RANGE_PCT = 8.0
"""Tempo differences at or beyond this many percent score 0 (a pitch fader's usual range)."""
HALF_DOUBLE = 0.9
"""Tempo term factor for a half/double-tempo mix."""
POOL = 200
"""Nearest tracks by embedding that a suggestion or a playlist step ranks (at least 20 × the number asked)."""
DUPLICATE_COSINE = 0.995
"""Embeddings closer than this are the same recording (another file, another encoding): never suggested."""
SIMILAR_PART = 0.5
"""A part of the embedding whose cosine reaches this counts as "similar" in a reason."""
THEME_WEIGHT = 0.5
"""Share of the theme (the seeds' average) against the transition from the previous track, in a playlist."""
IVF_MIN_ITEMS = 30_000
"""From this many tracks on, the index is approximate (inverted lists) rather than exact (which takes about
5 ms a query at 30k tracks, 16 ms at 100k on one core)."""
IVF_NPROBE = 32
"""Inverted lists searched per query (of ``4 √n``): recall@10 0.975 at 100k on the benchmark's clustered vectors."""
INDEX_FILE = "similarity.faiss"
META_FILE = "similarity.json"


class SimilarityError(Exception):
    """A suggestion or playlist cannot be made (no embedding, unknown track, ...). One line."""


# --------------------------------------------------------------------------- the index


def _faiss():
    """faiss, set to one thread: a single query is too small to share, and on a busy machine OpenMP's threads
    spin waiting for each other (measured: 40 ms instead of 0.7 ms for one query among 10k on two cores)."""
    import faiss

    if faiss.omp_get_max_threads() != 1:
        faiss.omp_set_num_threads(1)
    return faiss


class SimilarityIndex:
    """A faiss index of unit vectors with the content hash of each row.

    Parameters
    ----------
    hashes : sequence of str
        Content hashes, in row order.
    index : faiss.Index
        Inner-product index holding ``len(hashes)`` vectors.
    fingerprint : str
        :func:`prep.embed.embeddings_fingerprint` of the crate it was built from.
    """

    def __init__(self, hashes: Sequence[str], index, fingerprint: str = "") -> None:
        self.hashes = list(hashes)
        self.index = index
        self.fingerprint = fingerprint
        self.row = {h: i for i, h in enumerate(self.hashes)}

    @classmethod
    def build(cls, hashes: Sequence[str], vectors: np.ndarray, fingerprint: str = "",
              ivf_min_items: int = IVF_MIN_ITEMS) -> SimilarityIndex:
        """An index of ``vectors`` (float32 ``(n, d)``, unit length): exact below ``ivf_min_items``, else IVF."""
        faiss = _faiss()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = x.shape
        if n >= ivf_min_items:
            # 4 √n lists, but at least 39 training points per list (faiss' minimum for a sound k-means).
            nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            train = x[rng.choice(n, size=min(n, 40 * nlist), replace=False)]
            index.train(train)
            index.add(x)
            index.nprobe = IVF_NPROBE
            index.make_direct_map()
        else:
            index = faiss.IndexFlatIP(d)
            index.add(x)
        return cls(hashes, index, fingerprint)

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or ``"ivf"`` (approximate)."""
        return "ivf" if "IVF" in type(self.index).__name__ else "flat"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of each query: cosines ``(q, k)`` and row numbers ``(q, k)`` (-1 past the end)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), len(self.hashes)))
        if not self.hashes:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return self.index.search(q, k)

    def vector(self, content_hash: str) -> np.ndarray | None:
        """The stored vector of a track, or None when it is not indexed."""
        i = self.row.get(content_hash)
        return None if i is None else self.index.reconstruct(int(i))

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """Stored vectors of several rows, ``(len(rows), d)``."""
        return np.stack([self.index.reconstruct(int(i)) for i in rows]) if len(rows) else \
            np.zeros((0, self.index.d), np.float32)

    def save(self, folder: str | Path) -> None:
        """Write ``similarity.faiss`` and ``similarity.json`` into ``folder`` (each replaced atomically)."""
        import hashlib

        faiss = _faiss()
        folder = Path(folder)
        tmp_index = folder / f".{INDEX_FILE}.{os.getpid()}"
        tmp_meta = folder / f".{META_FILE}.{os.getpid()}"
        data = faiss.serialize_index(self.index).tobytes()
        tmp_index.write_bytes(data)
        # The list names the index it belongs to by digest: a reader never pairs one writer's list with
        # another's index (two processes may rebuild at once).
        tmp_meta.write_text(json.dumps({"fingerprint": self.fingerprint, "kind": self.kind,
                                        "index_digest": hashlib.blake2b(data, digest_size=16).hexdigest(),
                                        "hashes": self.hashes}))
        os.replace(tmp_index, folder / INDEX_FILE)
        os.replace(tmp_meta, folder / META_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> SimilarityIndex | None:
        """The index cached in ``folder``, or None when there is none or it cannot be read."""
        import hashlib

        faiss = _faiss()
        folder = Path(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            data = (folder / INDEX_FILE).read_bytes()
            if hashlib.blake2b(data, digest_size=16).hexdigest() != meta.get("index_digest"):
                return None
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (OSError, ValueError, RuntimeError, AttributeError):
            return None
        if index.ntotal != len(meta.get("hashes", [])):
            return None
        if "IVF" in type(index).__name__:
            index = faiss.extract_index_ivf(index)
            index.nprobe = IVF_NPROBE
            index.make_direct_map()
        return cls(meta["hashes"], index, meta.get("fingerprint", ""))


def open_index(crate, cache: bool = True) -> SimilarityIndex:
    """The similarity index of a crate: the cached one when it is current, else built (and cached).

    Parameters
    ----------
    crate : prep.crate.Crate
        An open crate (read-only is fine: the cache is a file beside the database, not in it).
    cache : bool
        Read and write ``CRATE/.ate/similarity.faiss``; a folder that cannot be written only costs the cache.
    """
    from prep.embed import embeddings_fingerprint, load_embeddings

    folder = Path(crate.db_path).parent
    fingerprint = embeddings_fingerprint(crate)
    if cache:
        cached = SimilarityIndex.load(folder)
        if cached is not None and cached.fingerprint == fingerprint:
            return cached
    hashes, vectors = load_embeddings(crate)
    index = SimilarityIndex.build(hashes, vectors, fingerprint)
    if cache:
        try:
            index.save(folder)
        except OSError:
            pass
    return index


# --------------------------------------------------------------------------- key, tempo, reasons


def _camelot_parts(code: str | None) -> tuple[int, str] | None:
    from prep.crate import parse_camelot

    number, letter = parse_camelot(code)
    return None if number is None else (number, letter)


def key_relation(from_camelot: str | None, to_camelot: str | None) -> tuple[float, str]:
    """Key term of the score (:data:`KEY_SCORES`) and its words, e.g. ``(0.85, "8A→9A (+1)")``."""
    from prep.key import camelot_distance

    a, b = _camelot_parts(from_camelot), _camelot_parts(to_camelot)
    if a is None or b is None:
        return KEY_UNKNOWN, "key unknown"
    step = (b[0] - a[0] + 6) % 12 - 6            # -6..+5 steps round the wheel
    words = []
    if step:
        words.append(f"{step:+d}")
    if a[1] != b[1]:
        words.append("relative" if not step else "mode change")
    distance = camelot_distance(from_camelot, to_camelot)
    if distance == 0:
        words = ["same key"]
    elif distance > 2:
        words.append("clash")
    return KEY_SCORES.get(distance, 0.0), f"{a[0]}{a[1]}→{b[0]}{b[1]} ({', '.join(words)})"


def tempo_relation(from_bpm: float | None, to_bpm: float | None) -> tuple[float, float, float]:
    """How far ``to_bpm`` is from ``from_bpm``, half and double tempo understood.

    Returns
    -------
    factor : float
        1, 2 (the candidate runs at double tempo: 174 after 87) or 0.5 (half tempo); NaN when unknown.
    pct : float
        The remaining difference after that factor, in percent (signed).
    score : float
        The tempo term: ``max(0, 1 - |pct| / TEMPO_RANGE_PCT)``, times :data:`HALF_DOUBLE` for a factor ≠ 1.
    """
    if not from_bpm or not to_bpm or not (math.isfinite(from_bpm) and math.isfinite(to_bpm)):
        return math.nan, math.nan, 0.0
    ratio = float(to_bpm) / float(from_bpm)
    factor = min((1.0, 2.0, 0.5), key=lambda f: abs(math.log2(ratio / f)))
    pct = (ratio / factor - 1.0) * 100.0
    score = max(0.0, 1.0 - abs(pct) / TEMPO_RANGE_PCT) * (1.0 if factor == 1.0 else HALF_DOUBLE)
    return factor, pct, score


def _tempo_words(factor: float, pct: float) -> str:
    if math.isnan(factor):
        return "tempo unknown"
    name = {1.0: "tempo", 2.0: "double tempo", 0.5: "half tempo"}[factor]
    return f"{name} {pct:+.1f} %"


def similarity_reason(parts: dict[str, float], cosine: float) -> str:
    """``"similar drums and harmony"``: the (at most two) parts that agree most, from :func:`part_similarity`."""
    from prep.embed import PARTS

    words = {name: label for name, _, _, label in PARTS}
    ranked = sorted(((v, k) for k, v in parts.items() if k != "tempo" and v >= SIMILAR_PART), reverse=True)
    if ranked:
        return "similar " + " and ".join(words[k] for _, k in ranked[:2])
    return "similar overall" if cosine >= SIMILAR_PART else "different sound"


# --------------------------------------------------------------------------- suggestions


@dataclass
class Suggestion:
    """One suggested next track and why.

    Attributes
    ----------
    score : float
        The blend (:data:`BLEND`), higher is better.
    similarity, key_score, tempo_score : float
        Its three terms (cosine -1..1, key 0..1, tempo 0..1).
    tempo_factor, tempo_pct : float
        See :func:`tempo_relation`.
    reason : str
        ``"similar drums and harmony; 8A→9A (+1); tempo +1.6 %"``.
    parts : dict
        Cosine of each part of the embedding.
    """

    content_hash: str
    title: str
    artist: str | None
    path: str
    bpm: float | None
    camelot: str | None
    score: float
    similarity: float
    key_score: float
    tempo_score: float
    tempo_factor: float
    tempo_pct: float
    reason: str
    parts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready (NaN as None, figures rounded)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = None if not math.isfinite(v) else round(v, 4)
        d["parts"] = {k: round(v, 3) for k, v in self.parts.items()}
        return d


def _score(ref: dict, ref_vec: np.ndarray, cand: dict, cand_vec: np.ndarray,
           weights: dict[str, float] = BLEND) -> Suggestion:
    from prep.embed import part_similarity

    cosine = float(ref_vec @ cand_vec)
    key_score, key_words = key_relation(ref.get("camelot"), cand.get("camelot"))
    factor, pct, tempo_score = tempo_relation(ref.get("bpm"), cand.get("bpm"))
    parts = part_similarity(ref_vec, cand_vec)
    score = weights["similarity"] * cosine + weights["key"] * key_score + weights["tempo"] * tempo_score
    reason = f"{similarity_reason(parts, cosine)}; {key_words}; {_tempo_words(factor, pct)}"
    return Suggestion(cand["content_hash"], cand.get("title") or "", cand.get("artist"),
                      cand.get("abs_path") or cand.get("path") or "", cand.get("bpm"), cand.get("camelot"),
                      score, cosine, key_score, tempo_score, factor, pct, reason, parts)


def suggest_for(ref: dict, index: SimilarityIndex, rows: dict[str, dict], n: int = 10,
                weights: dict[str, float] = BLEND, exclude: Sequence[str] = ()) -> list[Suggestion]:
    """Suggestions after the track ``ref`` (a crate row), from an index and the crate's rows by content hash.

    Parameters
    ----------
    ref : dict
        The reference track's row (:meth:`prep.crate.Crate.list_tracks`).
    index : SimilarityIndex
        Holds the reference's embedding and the candidates'.
    rows : dict
        Content hash -> row, for titles, BPM and keys.
    n : int
        How many (at most).
    weights : dict
        :data:`BLEND` by default.
    exclude : sequence of str
        Content hashes never to suggest (e.g. what already played).

    Raises
    ------
    SimilarityError
        The reference has no embedding.
    """
    ref_vec = index.vector(ref["content_hash"])
    if ref_vec is None:
        raise SimilarityError(f"{ref.get('title') or ref['content_hash']}: no embedding yet "
                              "(run `ate prep CRATE` to compute it)")
    skip = set(exclude) | {ref["content_hash"]}
    cosines, found = index.search(ref_vec, max(POOL, 20 * n))
    scored = []
    for cosine, i in zip(cosines[0], found[0]):
        if i < 0:
            continue
        h = index.hashes[i]
        if h in skip or h not in rows or cosine > DUPLICATE_COSINE:
            continue
        vec = index.vector(h)
        scored.append((_score(ref, ref_vec, rows[h], vec, weights), vec))
    scored.sort(key=lambda sv: -sv[0].score)
    out, kept = [], []
    for s, vec in scored:
        # One recording once: a second file of a suggested track is not another suggestion.
        if len(out) == n:
            break
        if all(float(vec @ k) <= DUPLICATE_COSINE for k in kept):
            out.append(s)
            kept.append(vec)
    return out


def _open_crate(crate_dir: str | Path, readonly: bool = True):
    from prep.crate import Crate, default_db_path

    db = default_db_path(Path(crate_dir))
    if not db.exists():
        raise SimilarityError(f"{crate_dir}: no crate database (run `ate prep {crate_dir}` first)")
    return Crate(db, readonly=readonly, root=crate_dir)


def _find_one(crate, query: str) -> dict:
    from prep.crate import TrackNotFound

    try:
        return crate.find_track(query)
    except TrackNotFound as err:
        raise SimilarityError(str(err)) from None


def suggest(crate, track: str, n: int = 10, weights: dict[str, float] = BLEND) -> tuple[dict, list[Suggestion]]:
    """Suggestions after ``track`` (a path, content-hash prefix or title) in an open crate: (its row, suggestions)."""
    ref = _find_one(crate, track)
    rows = {r["content_hash"]: r for r in crate.list_tracks()}
    return ref, suggest_for(ref, open_index(crate), rows, n=n, weights=weights)


class Suggester:
    """Suggestions for a crate folder, kept ready for a UI: rows and index loaded once, reloaded when stale.

    Parameters
    ----------
    crate_dir : str or Path
        A prepared crate.
    """

    def __init__(self, crate_dir: str | Path) -> None:
        self.crate_dir = Path(crate_dir)
        self._index: SimilarityIndex | None = None
        self._rows: dict[str, dict] = {}
        self._by_path: dict[str, str] = {}
        self._cache: dict[str, list[Suggestion]] = {}

    def _refresh(self) -> None:
        from prep.embed import embeddings_fingerprint

        with _open_crate(self.crate_dir) as crate:
            if self._index is not None and self._index.fingerprint == embeddings_fingerprint(crate):
                return
            self._rows = {r["content_hash"]: r for r in crate.list_tracks()}
            self._index = open_index(crate)
        self._by_path = {r["abs_path"]: h for h, r in self._rows.items()}
        self._cache.clear()

    def for_track(self, track: str, n: int = 50) -> list[Suggestion]:
        """Suggestions after a track given by content hash or absolute path ([] when unknown or not embedded)."""
        self._refresh()
        h = track if track in self._rows else self._by_path.get(str(track))
        if h is None:
            return []
        if h not in self._cache:
            try:
                self._cache[h] = suggest_for(self._rows[h], self._index, self._rows, n=n)
            except SimilarityError:
                self._cache[h] = []
        return self._cache[h]


# --------------------------------------------------------------------------- playlists


def make_playlist(index: SimilarityIndex, rows: dict[str, dict], seeds: Sequence[str], n: int,
                  weights: dict[str, float] = BLEND) -> list[tuple[str, str]]:
    """A playlist of ``n`` tracks grown from seed tracks (see the module docstring).

    Parameters
    ----------
    index : SimilarityIndex
        Holds the seeds' and the candidates' embeddings.
    rows : dict
        Content hash -> crate row (title, artist, BPM, Camelot).
    seeds : sequence of str
        Content hashes; they open the playlist in this order (repeats and near-duplicates dropped).
    n : int
        Tracks wanted (fewer when the crate runs out).

    Returns
    -------
    list of (str, str)
        ``(content hash, reason)``; a seed's reason is ``"seed"``, a following track's says how it follows
        the previous one.

    Raises
    ------
    SimilarityError
        A seed has no embedding.
    """
    seed_vecs = []
    for h in seeds:
        v = index.vector(h)
        if v is None:
            raise SimilarityError(f"{rows.get(h, {}).get('title') or h}: no embedding yet (run `ate prep CRATE`)")
        seed_vecs.append(v)
    if not seed_vecs:
        raise SimilarityError("a playlist needs at least one seed track")
    theme = np.mean(seed_vecs, axis=0)
    theme /= max(float(np.linalg.norm(theme)), 1e-12)

    chosen: list[tuple[str, str]] = []
    chosen_vecs: list[np.ndarray] = []

    def duplicate(h: str, v: np.ndarray) -> bool:
        return any(h == c for c, _ in chosen) or any(float(v @ w) > DUPLICATE_COSINE for w in chosen_vecs)

    for h, v in zip(seeds, seed_vecs):
        if len(chosen) < n and not duplicate(h, v):
            chosen.append((h, "seed"))
            chosen_vecs.append(v)
    _, found = index.search(theme, max(POOL, 20 * n))
    pool = [index.hashes[i] for i in found[0] if i >= 0 and index.hashes[i] in rows]
    pool_vecs = {h: index.vector(h) for h in pool}

    def artist(h: str) -> str:
        return str(rows[h].get("artist") or "").strip().casefold()

    while len(chosen) < n:
        prev = chosen[-1][0]
        prev_row, prev_vec = rows.get(prev, {"content_hash": prev}), chosen_vecs[-1]
        options = [h for h in pool if not duplicate(h, pool_vecs[h])]
        if not options:
            break
        other_artist = [h for h in options if not artist(prev) or artist(h) != artist(prev)]
        best, best_score = None, -math.inf
        for h in other_artist or options:
            s = _score(prev_row, prev_vec, rows[h], pool_vecs[h], weights)
            total = THEME_WEIGHT * float(theme @ pool_vecs[h]) + (1.0 - THEME_WEIGHT) * s.score
            if total > best_score:
                best, best_score = s, total
        chosen.append((best.content_hash, best.reason))
        chosen_vecs.append(pool_vecs[best.content_hash])
    return chosen


def save_playlist(crate, name: str, hashes: Sequence[str]) -> int:
    """Store a playlist (replacing one of the same name) in the crate's ``playlists`` tables; returns its id."""
    from prep.crate import now_iso

    with crate.transaction() as conn:
        conn.execute("DELETE FROM playlists WHERE name = ?", (name,))
        playlist_id = conn.execute("INSERT INTO playlists (name, created_at) VALUES (?, ?) RETURNING id",
                                   (name, now_iso())).fetchone()[0]
        ids = {h: i for h, i in conn.execute("SELECT content_hash, id FROM tracks")}
        missing = [h for h in hashes if h not in ids]
        if missing:
            raise SimilarityError(f"{crate.db_path}: no track with hash {missing[0]}")
        conn.executemany("INSERT INTO playlist_tracks (playlist_id, position, track_id) VALUES (?, ?, ?)",
                         [(playlist_id, pos, ids[h]) for pos, h in enumerate(hashes)])
    return int(playlist_id)


def load_playlist(crate, name: str) -> list[dict] | None:
    """The tracks (crate rows, in order) of the playlist called ``name``, or None when there is none."""
    conn = crate.connection
    row = conn.execute("SELECT id FROM playlists WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    ids = [r[0] for r in conn.execute("SELECT track_id FROM playlist_tracks WHERE playlist_id = ? ORDER BY position",
                                      (row[0],))]
    return [crate.get_track(int(i)) for i in ids]


def m3u_path(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when they share more than the filesystem root, else absolute."""
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    common = os.path.commonpath([path, folder])
    if common == os.path.abspath(os.sep):
        return path.as_posix()
    return Path(os.path.relpath(path, folder)).as_posix()


def write_m3u(path: str | Path, tracks: Sequence[dict]) -> Path:
    """Write an extended M3U playlist (``#EXTM3U``, ``#EXTINF:seconds,Artist - Title``, UTF-8).

    Parameters
    ----------
    path : str or Path
        The playlist file (``.m3u`` or ``.m3u8``); its folder is created.
    tracks : sequence of dict
        Crate rows (``abs_path``, ``duration_s``, ``title``, ``artist``). Paths are written relative to the
        playlist's folder where they share a folder above the root, else absolute.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["#EXTM3U"]
    for t in tracks:
        seconds = t.get("duration_s")
        seconds = int(round(seconds)) if seconds is not None and math.isfinite(seconds) else -1
        title = str(t.get("title") or Path(t["abs_path"]).stem).replace("\n", " ")
        artist = str(t.get("artist") or "").replace("\n", " ")
        lines.append(f"#EXTINF:{seconds},{artist + ' - ' if artist else ''}{title}")
        lines.append(m3u_path(Path(t["abs_path"]), path.parent))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_m3u(path: str | Path) -> list[dict]:
    """Entries of an M3U playlist: ``{"path": absolute Path, "duration_s": int or None, "title": str or None}``."""
    path = Path(path)
    entries, info = [], None
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if not line or (line.startswith("#") and not line.startswith("#EXTINF:")):
            continue
        if line.startswith("#EXTINF:"):
            head, _, title = line[len("#EXTINF:"):].partition(",")
            try:
                seconds = int(float(head.split()[0])) if head.strip() else -1
            except ValueError:
                seconds = -1
            info = (None if seconds < 0 else seconds, title or None)
            continue
        target = Path(line)
        if not target.is_absolute():
            target = (path.parent / target).resolve()
        duration, title = info or (None, None)
        entries.append({"path": target, "duration_s": duration, "title": title})
        info = None
    return entries


# --------------------------------------------------------------------------- command line


def _find_crate(track: str, crate: str | None) -> Path:
    """The crate folder: ``--crate``, else the nearest folder above a TRACK file holding ``.ate/``, else ``.``."""
    from prep.crate import default_db_path

    if crate:
        return Path(crate)
    candidate = Path(track)
    if candidate.exists():
        for folder in candidate.resolve().parents:
            if default_db_path(folder).exists():
                return folder
    return Path(".")


def _format_suggestions(ref: dict, suggestions: list[Suggestion]) -> str:
    head = f"after {ref['title']} ({_bpm_text(ref.get('bpm'))} BPM, {ref.get('camelot') or '?'}):"
    if not suggestions:
        return head + "\n  (no other track has an embedding yet)"
    width = min(40, max(len(s.title) for s in suggestions))
    lines = [head]
    for i, s in enumerate(suggestions, 1):
        lines.append(f"{i:3d}  {s.score:5.2f}  {s.title[:width]:<{width}}  {_bpm_text(s.bpm):>6}  "
                     f"{s.camelot or '-':>3}  {s.reason}")
    return "\n".join(lines)


def _bpm_text(bpm: float | None) -> str:
    return f"{bpm:.1f}" if bpm else "-"


def _cmd_suggest(args: argparse.Namespace) -> int:
    from prep.crate import CrateError

    if args.n < 1:
        print("error: -n must be at least 1", file=sys.stderr)
        return 2
    folder = _find_crate(args.track, args.crate)
    try:
        with _open_crate(folder) as crate:
            ref, suggestions = suggest(crate, args.track, n=args.n)
    except (SimilarityError, CrateError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"track": {k: ref.get(k) for k in ("content_hash", "title", "artist", "abs_path", "bpm",
                                                             "camelot")},
                          "suggestions": [s.to_dict() for s in suggestions]}))
    else:
        print(_format_suggestions(ref, suggestions))
    return 0


def _cmd_playlist(args: argparse.Namespace) -> int:
    from prep.crate import CrateError

    if args.n < 1:
        print("error: -n must be at least 1", file=sys.stderr)
        return 2
    folder = _find_crate(args.seeds[0], args.crate)
    try:
        with _open_crate(folder, readonly=False) as crate:
            seeds = [_find_one(crate, q) for q in args.seeds]
            rows = {r["content_hash"]: r for r in crate.list_tracks()}
            chosen = make_playlist(open_index(crate), rows, [s["content_hash"] for s in seeds], args.n)
            name = args.name or ("from " + " + ".join(s["title"] for s in seeds[:3]) +
                                 (f" + {len(seeds) - 3} more" if len(seeds) > 3 else ""))
            save_playlist(crate, name, [h for h, _ in chosen])
            tracks = [rows[h] for h, _ in chosen]
    except (SimilarityError, CrateError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    m3u = write_m3u(args.m3u, tracks) if args.m3u else None
    if args.json:
        print(json.dumps({"name": name, "m3u": str(m3u) if m3u else None,
                          "tracks": [{"content_hash": t["content_hash"], "title": t["title"], "artist": t.get("artist"),
                                      "bpm": t.get("bpm"), "camelot": t.get("camelot"), "reason": reason}
                                     for t, (_, reason) in zip(tracks, chosen)]}))
        return 0
    print(f'playlist "{name}": {len(tracks)} tracks, saved in {crate.db_path}' + (f", written to {m3u}" if m3u else ""))
    width = min(40, max(len(t["title"]) for t in tracks))
    for i, (t, (_, reason)) in enumerate(zip(tracks, chosen), 1):
        artist = f" ({t['artist']})" if t.get("artist") else ""
        print(f"{i:3d}  {(t['title'] + artist)[:width + 12]:<{width + 12}}  {_bpm_text(t.get('bpm')):>6}  "
              f"{t.get('camelot') or '-':>3}  {reason}")
    if len(tracks) < args.n:
        print(f"(only {len(tracks)} of {args.n}: the crate has no more distinct tracks with embeddings)")
    return 0


def register_cli(sub) -> None:
    """``ate suggest`` and ``ate playlist``."""
    p = sub.add_parser("suggest", help="next tracks for a track: similar sound, compatible key and tempo, with reasons")
    p.add_argument("track", metavar="TRACK", help="path, content-hash prefix or title of a prepared track")
    p.add_argument("--crate", default=None, help="the crate folder (default: the one holding TRACK, else .)")
    p.add_argument("-n", type=int, default=10, help="how many (10)")
    p.add_argument("--json", action="store_true", help="one JSON object: the track and its suggestions")
    p.set_defaults(func=_cmd_suggest)

    p = sub.add_parser("playlist", help="a playlist grown from seed tracks, saved in the crate (and as M3U)")
    p.add_argument("seeds", nargs="+", metavar="SEED", help="path, content-hash prefix or title of a seed track")
    p.add_argument("-n", type=int, default=20, help="tracks in the playlist, seeds included (20)")
    p.add_argument("--crate", default=None, help="the crate folder (default: the one holding the first SEED, else .)")
    p.add_argument("--name", default=None, help="the playlist's name in the crate (replaces one of that name)")
    p.add_argument("--m3u", default=None, metavar="FILE", help="also write it as an extended M3U playlist")
    p.add_argument("--json", action="store_true", help="one JSON object: name, file and tracks with reasons")
    p.set_defaults(func=_cmd_playlist)
