"""``ate bench similarity``: how well the embeddings find related tracks, what they cost, how fast the index answers.

A crate is generated with :mod:`prep.synth` in five styles (house, breakbeat, dnb, hiphop, waltz), each
file written with a genre tag, and prepared by the real pipeline (:func:`prep.pipeline.prep_crate` with the
DSP separator, and the ``embed`` step). Then:

- **halves** (no labels needed): every track's first and second half are embedded separately (the audio
  and the analysis cut at the downbeat nearest the middle); each first half queries all the other halves
  (first and second halves of every track, itself excluded): top-1 and top-10 accuracy of finding its
  own second half. Chance is 1/(2n-1) and 10/(2n-1);
- **genre** (labels read back from the files' genre tags): leave-one-out k-NN accuracy (k = 5, cosine)
  and the silhouette (cosine) of the whole-track embeddings; chance is 1/5;
- the same two on a **baseline** measured in the same run: mean and standard deviation of 20 librosa
  MFCCs of the mix, standardised over the crate (a classic "timbre of the mix" vector);
- **cost**: CPU time of the embedding against the analysis of the same tracks (process time);
- **latency**: one query for the 10 nearest among 1k, 10k and 100k synthetic clustered unit vectors of
  the embedding's size: faiss exact (``IndexFlatIP``), faiss IVF (what :class:`SimilarityIndex` uses from
  :data:`IVF_MIN_ITEMS` tracks on) with its recall@10, and the peer, a brute-force numpy search
  (``X @ q`` and ``argpartition``), median and 95th percentile over the queries.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

STYLES = {"house": (118.0, 128.0, 4), "breakbeat": (128.0, 145.0, 4), "dnb": (168.0, 178.0, 4),
          "hiphop": (80.0, 98.0, 4), "waltz": (90.0, 150.0, 3)}
"""Style -> (lowest BPM, highest BPM, beats per bar) of the generated crate."""


def _specs(per_style: int, bars: int, seed: int, styles: tuple[str, ...] = tuple(STYLES)) -> list:
    from prep.synth import TrackSpec

    rng = np.random.default_rng(seed)
    specs = []
    # Both halves hold a verse and a chorus, as in a real track; the intro and a breakdown fall in the first,
    # the outro in the second.
    q = bars // 8
    structure = [["intro", q], ["verse", q], ["chorus", q], ["breakdown", q], ["verse", q], ["chorus", 2 * q],
                 ["outro", q]]
    for i in range(per_style):
        for style in styles:
            lo, hi, bpb = STYLES[style]
            specs.append(TrackSpec(bpm=round(float(rng.uniform(lo, hi)), 1), beats_per_bar=bpb,
                                   tonic=int(rng.integers(12)), mode=("minor", "major")[int(rng.integers(2))],
                                   style=style, structure=structure, seed=int(rng.integers(2 ** 31)),
                                   swing=float(rng.choice([0.5, 0.5, 0.58])), title=f"{style} {i + 1:02d}"))
    return specs


def write_tagged_crate(folder: Path, per_style: int, bars: int, seed: int = 7,
                       styles: tuple[str, ...] = tuple(STYLES)) -> list[Path]:
    """Generated tracks as 16-bit WAV files carrying title, artist and genre tags; returns their paths."""
    import soundfile as sf

    from prep.synth import generate

    paths = []
    for i, spec in enumerate(_specs(per_style, bars, seed, styles)):
        track = generate(spec)
        path = folder / f"{i:03d} {spec.title}.wav"
        with sf.SoundFile(str(path), "w", samplerate=track.sample_rate, channels=2, subtype="PCM_16") as f:
            f.title = spec.title
            f.artist = f"Artist {i % 7}"
            f.genre = spec.style
            f.write(track.mix)
        paths.append(path)
    return paths


def _genre(path: str) -> str:
    import soundfile as sf

    with sf.SoundFile(path) as f:
        return str(f.copy_metadata().get("genre") or "")


def _split(track, analysis: dict):
    """(first-half input, second-half input, cut in samples) cut at the downbeat nearest the middle."""
    from prep.audio import SAMPLE_RATE
    from prep.embed import slice_analysis

    n = len(track.mix)
    middle_s = n / SAMPLE_RATE / 2
    downbeats = np.asarray(analysis.get("downbeats") or [middle_s])
    cut_s = float(downbeats[np.argmin(np.abs(downbeats - middle_s))])
    cut = int(round(cut_s * SAMPLE_RATE))
    halves = []
    for a, b, a_s, b_s in ((0, cut, 0.0, cut_s), (cut, n, cut_s, n / SAMPLE_RATE)):
        stems = track.stems[:, a:b] if track.stems is not None else None
        halves.append((track.mix[a:b], stems, slice_analysis(analysis, a_s, b_s)))
    return halves[0], halves[1], cut


def _halves_accuracy(first: np.ndarray, second: np.ndarray) -> dict:
    """Top-1 / top-10 accuracy of each first half finding its own second half among all other halves."""
    n = len(first)
    pool = np.concatenate([first, second])
    sims = first @ pool.T
    sims[np.arange(n), np.arange(n)] = -np.inf          # a half does not find itself
    rank = (sims > sims[np.arange(n), n + np.arange(n)][:, None]).sum(axis=1)
    return {"top1": float((rank < 1).mean()), "top10": float((rank < 10).mean()),
            "chance_top1": 1.0 / (2 * n - 1), "chance_top10": min(1.0, 10.0 / (2 * n - 1)),
            "median_rank": float(np.median(rank) + 1)}


def _genre_scores(x: np.ndarray, labels: list[str], k: int = 5) -> dict:
    """Leave-one-out k-NN accuracy (k at most the smallest class size - 1) and cosine silhouette."""
    from sklearn.metrics import silhouette_score

    y = np.asarray(labels)
    k = max(1, min(k, min(labels.count(g) for g in set(labels)) - 1))
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    hits = []
    for i in range(len(y)):
        near = np.argsort(-sims[i])[:k]
        votes = {}
        for rank, j in enumerate(near):                  # ties go to the nearer neighbours
            votes[y[j]] = votes.get(y[j], 0.0) + 1.0 + 1e-3 * (k - rank)
        hits.append(max(votes, key=votes.get) == y[i])
    return {"knn_accuracy": float(np.mean(hits)), "k": k, "chance": 1.0 / len(set(labels)),
            "silhouette": float(silhouette_score(x, y, metric="cosine"))}


def _mfcc_baseline(mix: np.ndarray, cut: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The baseline vectors of the whole mix, its first ``cut`` samples and the rest (one MFCC pass)."""
    import librosa

    from prep.audio import SAMPLE_RATE, resample, to_mono

    y = resample(to_mono(mix)[:, None], SAMPLE_RATE, 22050)[:, 0]
    m = librosa.feature.mfcc(y=y, sr=22050, n_mfcc=20)            # hop 512 at 22050 Hz
    split = int(round(cut / 2 / 512))

    def stats(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x.mean(axis=1), x.std(axis=1)])

    return stats(m), stats(m[:, :split]), stats(m[:, split:])


def _standardise_columns(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-9)


def _quality(crate_dir: Path, timing_tracks: int) -> dict:
    from prep.analyze import analyze_audio
    from prep.crate import Crate, default_db_path
    from prep.embed import embed_audio, load_embeddings
    from prep.steps import load_track_input

    with Crate(default_db_path(crate_dir), readonly=True) as crate:
        hashes, vectors = load_embeddings(crate)
        rows = {r["content_hash"]: r for r in crate.list_tracks()}
        first, second, base_first, base_second, base_full, analysis_s, embed_s = [], [], [], [], [], [], []
        for i, h in enumerate(hashes):
            track = load_track_input(crate, h)
            analysis = track.analysis
            if i < timing_tracks:
                t0 = time.process_time()
                analyze_audio(track.mix, stems=track.stems)
                analysis_s.append(time.process_time() - t0)
                t0 = time.process_time()
                embed_audio(track.mix, track.stems, analysis, track.stems_model)
                embed_s.append(time.process_time() - t0)
            (m1, s1, a1), (m2, s2, a2), cut = _split(track, analysis)
            first.append(embed_audio(m1, s1, a1, track.stems_model).vector)
            second.append(embed_audio(m2, s2, a2, track.stems_model).vector)
            full, b1, b2 = _mfcc_baseline(track.mix, cut)
            base_full.append(full)
            base_first.append(b1)
            base_second.append(b2)
    labels = [_genre(rows[h]["abs_path"]) for h in hashes]
    base = _standardise_columns(np.concatenate([base_first, base_second, base_full]))
    n = len(hashes)
    base_first, base_second, base_full = base[:n], base[n:2 * n], base[2 * n:]
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    return {
        "tracks": n,
        "labels": {g: labels.count(g) for g in sorted(set(labels))},
        "halves": {"ate": _halves_accuracy(np.stack(first), np.stack(second)),
                   "mfcc_baseline": _halves_accuracy(unit(base_first), unit(base_second))},
        "genre": {"ate": _genre_scores(vectors, labels), "mfcc_baseline": _genre_scores(base_full, labels)},
        "cost": {"tracks_timed": len(analysis_s), "analysis_cpu_s": round(float(np.sum(analysis_s)), 3),
                 "embed_cpu_s": round(float(np.sum(embed_s)), 3),
                 "embed_over_analysis": round(float(np.sum(embed_s) / max(np.sum(analysis_s), 1e-9)), 3)},
    }


def _clustered(n: int, d: int, rng: np.random.Generator, clusters: int = 500) -> np.ndarray:
    # Real embeddings cluster (styles, artists); uniform random vectors would make IVF look worse than it is.
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(clusters, size=n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _percentiles(times_s: list[float]) -> dict:
    ms = np.asarray(times_s) * 1000.0
    return {"median_ms": round(float(np.median(ms)), 4), "p95_ms": round(float(np.percentile(ms, 95)), 4)}


def _latency(sizes: tuple[int, ...], queries: int, k: int = 10) -> dict:
    from prep.embed import DIM
    from prep.similarity import IVF_NPROBE, SimilarityIndex, _faiss

    faiss = _faiss()

    rng = np.random.default_rng(3)
    out = {"dim": DIM, "k": k, "queries": queries, "faiss_threads": faiss.omp_get_max_threads(), "sizes": {}}
    for n in sizes:
        x = _clustered(n, DIM, rng)
        q = _clustered(queries, DIM, rng)
        t0 = time.perf_counter()
        flat = SimilarityIndex.build([str(i) for i in range(n)], x, ivf_min_items=n + 1)
        flat_build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ivf = SimilarityIndex.build([str(i) for i in range(n)], x, ivf_min_items=0)
        ivf_build_s = time.perf_counter() - t0
        times = {"numpy": [], "faiss_flat": [], "faiss_ivf": []}
        recall = []
        for i in range(queries):
            t0 = time.perf_counter()
            scores = x @ q[i]
            top = np.argpartition(-scores, k)[:k]
            top = top[np.argsort(-scores[top])]
            times["numpy"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, exact = flat.search(q[i], k)
            times["faiss_flat"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, approx = ivf.search(q[i], k)
            times["faiss_ivf"].append(time.perf_counter() - t0)
            recall.append(len(set(approx[0]) & set(exact[0])) / k)
            if i == 0:
                assert set(exact[0]) == set(top), "faiss and numpy disagree on the exact nearest"
        row = {name: _percentiles(t) for name, t in times.items()}
        numpy_ms = row["numpy"]["median_ms"]
        row["numpy_over_faiss_flat"] = round(numpy_ms / max(row["faiss_flat"]["median_ms"], 1e-6), 2)
        row["numpy_over_faiss_ivf"] = round(numpy_ms / max(row["faiss_ivf"]["median_ms"], 1e-6), 2)
        row["ivf_recall_at_10"] = round(float(np.mean(recall)), 4)
        row["ivf_nlist"] = int(ivf.index.nlist)
        row["ivf_nprobe"] = IVF_NPROBE
        row["build_s"] = {"faiss_flat": round(flat_build_s, 3), "faiss_ivf": round(ivf_build_s, 3)}
        out["sizes"][str(n)] = row
    return out


def bench_similarity(quick: bool = False) -> dict:
    """Retrieval quality, cost and query latency of the similarity embeddings and index (module docstring).

    Parameters
    ----------
    quick : bool
        Two tracks of 8 bars in each of two styles (house, dnb), analysed from the mix (no
        separation), latency at 1k and 10k items: a check that it all runs, its figures mean little. The full
        run is eight tracks per style of 32 bars in all five styles with DSP stems, and 1k / 10k / 100k.
    """
    from prep.pipeline import prep_crate
    from prep.separate import choose_separator

    per_style, bars = (2, 8) if quick else (8, 32)
    styles = ("house", "dnb") if quick else tuple(STYLES)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ate-bench-similarity-") as tmp:
        folder = Path(tmp) / "crate"
        folder.mkdir()
        write_tagged_crate(folder, per_style, bars, styles=styles)
        separator = None if quick else choose_separator("dsp")
        t0 = time.perf_counter()
        report = prep_crate(folder, workers=1 if quick else (os.cpu_count() or 1), progress=False,
                            separator=separator, steps=["embed"])
        prep_s = time.perf_counter() - t0
        if report.failed or report.steps.get("embed", 0) != report.new:
            raise RuntimeError(f"prep of the generated crate failed: {report.failed or report.steps}")
        quality = _quality(folder, timing_tracks=2 if quick else 5)
    latency = _latency((1000, 10000) if quick else (1000, 10000, 100000), queries=20 if quick else 200)
    return {
        "set": {"styles": list(styles), "per_style": per_style, "bars": bars,
                "separator": separator.name if separator else "none", "prep_wall_s": round(prep_s, 1)},
        **quality,
        "latency": latency,
        "wall_s": round(time.perf_counter() - started, 1),
        "figures": _headline(quality, latency),
    }


def _headline(quality: dict, latency: dict) -> dict:
    sizes = latency["sizes"]
    largest = sizes[max(sizes, key=int)]
    return {
        "halves_top1": quality["halves"]["ate"]["top1"], "halves_top10": quality["halves"]["ate"]["top10"],
        "genre_knn": quality["genre"]["ate"]["knn_accuracy"], "silhouette": quality["genre"]["ate"]["silhouette"],
        "baseline_genre_knn": quality["genre"]["mfcc_baseline"]["knn_accuracy"],
        "embed_over_analysis": quality["cost"]["embed_over_analysis"],
        f"faiss_flat_ms_{max(sizes, key=int)}": largest["faiss_flat"]["median_ms"],
        f"numpy_over_faiss_flat_{max(sizes, key=int)}": largest["numpy_over_faiss_flat"],
        "ivf_recall_at_10": largest["ivf_recall_at_10"],
    }


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    print(json.dumps(bench_similarity(quick="--quick" in sys.argv), indent=2))
