"""Similarity embeddings, the faiss index, suggestions and playlists (prep/embed.py, prep/similarity.py).

The embedding tests use generated tracks with their true stems and their true grid, key and vocal
regions as the analysis (what a perfect prep would store); the crate tests run the real pipeline on a
tiny crate of short generated files (mix-only prep, the ``embed`` step on by default) and the real CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ate.cli import main as ate_main
from prep.audio import SAMPLE_RATE
from prep.crate import Crate, default_db_path
from prep.embed import DIM, PART_SLICES, EMBED_VERSION, embed_audio, get_embedding, slice_analysis
from prep.key import camelot
from prep.loudness import integrated_loudness_lufs, true_peak_dbtp
from prep.pipeline import prep_crate
from prep.similarity import (INDEX_FILE, META_FILE, SimilarityIndex, key_relation, load_playlist, m3u_path,
                             make_playlist, open_index, read_m3u, suggest_for, tempo_relation, write_m3u)
from prep.stems import STEM_NAMES
from prep.synth import TrackSpec, generate
from prep.vocals import merge_regions

# Both halves hold a verse and a chorus, as in a real track.
STRUCTURE = [["intro", 1], ["verse", 1], ["chorus", 1], ["breakdown", 1], ["verse", 1], ["chorus", 2], ["outro", 1]]
# Two tracks per style, different seeds, keys and tempos within the style.
STYLED = [("house", 124.0, 4, 9, "minor", 11), ("house", 127.0, 4, 0, "major", 12),
          ("dnb", 172.0, 4, 2, "minor", 13), ("dnb", 176.0, 4, 7, "major", 14),
          ("hiphop", 86.0, 4, 4, "minor", 15), ("hiphop", 92.0, 4, 5, "major", 16),
          ("waltz", 100.0, 3, 11, "minor", 17), ("waltz", 132.0, 3, 3, "major", 18)]


def _truth_analysis(track) -> dict:
    t = track.truth
    duration = len(track.mix) / SAMPLE_RATE
    return {"beats": [float(b) for b in t.beats], "downbeats": [float(b) for b in t.downbeats],
            "beats_per_bar": t.beats_per_bar, "bpm": t.bpm, "key": t.key, "duration": duration,
            "lufs": integrated_loudness_lufs(track.mix, SAMPLE_RATE),
            "true_peak_dbtp": true_peak_dbtp(track.mix, SAMPLE_RATE),
            "vocal_regions": [list(r) for r in merge_regions(t.vocal_regions, duration)]}


def embed_styled(tracks: list[tuple], structure: list) -> dict:
    """Embeddings of whole tracks and of their halves (cut at the middle downbeat), with their styles."""
    out = {"style": [], "whole": [], "first": [], "second": [], "rows": []}
    for i, (style, bpm, bpb, tonic, mode, seed) in enumerate(tracks):
        g = generate(TrackSpec(bpm=bpm, beats_per_bar=bpb, tonic=tonic, mode=mode, style=style, seed=seed,
                               structure=structure))
        stems = np.stack([g.stems[k] for k in STEM_NAMES])
        analysis = _truth_analysis(g)
        whole = embed_audio(g.mix, stems, analysis)
        downbeats = np.asarray(analysis["downbeats"])
        cut_s = float(downbeats[len(downbeats) // 2])
        cut = int(round(cut_s * SAMPLE_RATE))
        out["first"].append(embed_audio(g.mix[:cut], stems[:, :cut], slice_analysis(analysis, 0.0, cut_s)).vector)
        out["second"].append(embed_audio(g.mix[cut:], stems[:, cut:],
                                         slice_analysis(analysis, cut_s, analysis["duration"])).vector)
        out["style"].append(style)
        out["whole"].append(whole)
        out["rows"].append({"content_hash": f"h{i}", "title": f"{style} {i}", "bpm": bpm,
                            "camelot": camelot(tonic, mode)})
        if i == 0:
            out["track0"] = (g.mix, stems, analysis)
    return out


@pytest.fixture(scope="module")
def styled():
    return embed_styled(STYLED, STRUCTURE)


def test_embedding_is_deterministic_unit_float32_with_named_parts(styled):
    mix, stems, analysis = styled["track0"]
    a, b = embed_audio(mix, stems, analysis), styled["whole"][0]
    assert a.vector.dtype == np.float32 and a.vector.shape == (DIM,)
    assert np.array_equal(a.vector, b.vector)                     # bit for bit
    assert abs(float(np.linalg.norm(a.vector)) - 1.0) < 1e-5
    features = a.features()
    assert features["version"] == EMBED_VERSION and features["source"] == "stems"
    assert set(features["parts"]) == set(PART_SLICES) and sum(map(len, features["parts"].values())) == DIM
    json.dumps(features, allow_nan=False)                         # storable as it is
    # The tempo bumps peak at the track's tempo; the harmony profile is key-relative: the tonic and the
    # fifth of A minor (true key) lead the twelve bins.
    tempo = np.asarray(features["parts"]["tempo"][:12])
    assert 124.0 / 2 ** (1 / 12) < 60.0 * 2 ** (np.argmax(tempo) / 6) < 124.0 * 2 ** (1 / 12)
    chroma = np.asarray(features["parts"]["harmony"][:12])
    assert {0, 7} <= set(np.argsort(-chroma)[:4]) and features["parts"]["harmony"][12] == 1.0
    # Without stems the stem parts describe the mix and the vocal part is missing.
    c = embed_audio(mix, None, analysis)
    assert c.source == "mix" and all(v is None for v in c.features()["parts"]["vocal"])
    assert float(c.vector @ a.vector) > 0.2


def test_a_track_is_nearest_to_its_own_other_half(styled):
    first, second = np.stack(styled["first"]), np.stack(styled["second"])
    n = len(first)
    pool = np.concatenate([first, second])                       # every other half, first halves included
    sims = first @ pool.T
    sims[np.arange(n), np.arange(n)] = -np.inf
    assert list(np.argmax(sims, axis=1)) == list(range(n, 2 * n))


def test_tracks_are_nearest_to_their_own_style(styled):
    x = np.stack([e.vector for e in styled["whole"]])
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    styles = np.asarray(styled["style"])
    nearest = styles[np.argmax(sims, axis=1)]
    # Within a style the generator draws each track's drum and bass patterns from a few, and its chords,
    # lead and key freely, so 8-bar tracks of one style share less than real ones do: the nearest track is
    # of the same style for most (chance: 1 in 7), house (clap, four to the floor) always, and tracks of one
    # style are clearly closer to each other than to the rest. ate bench similarity measures the whole.
    assert (nearest == styles).sum() >= len(styles) // 2
    assert list(nearest[styles == "house"]) == ["house", "house"]
    same = styles[:, None] == styles[None, :]
    off_diagonal = ~np.eye(len(styles), dtype=bool)
    assert sims[same & off_diagonal].mean() > sims[~same].mean() + 0.15


def test_key_and_tempo_relations_with_words():
    assert key_relation("8A", "8A") == (1.0, "8A→8A (same key)")
    assert key_relation("8A", "9A") == (0.85, "8A→9A (+1)")
    assert key_relation("8A", "7A") == (0.85, "8A→7A (-1)")
    assert key_relation("8A", "8B") == (0.85, "8A→8B (relative)")
    assert key_relation("8A", "10A") == (0.4, "8A→10A (+2)")
    assert key_relation("12B", "1A") == (0.4, "12B→1A (+1, mode change)")
    assert key_relation("8A", "2A") == (0.0, "8A→2A (-6, clash)")
    assert key_relation(None, "2A")[1] == "key unknown"
    factor, pct, score = tempo_relation(87.0, 174.0)                 # double tempo: as close as it gets
    assert (factor, round(pct, 6), score) == (2.0, 0.0, 0.9)
    factor, pct, score = tempo_relation(174.0, 88.0)
    assert factor == 0.5 and pct == pytest.approx(100 * (176 / 174 - 1)) and score == pytest.approx(0.9 * (1 - pct / 8))
    factor, pct, score = tempo_relation(128.0, 130.0)
    assert factor == 1.0 and pct == pytest.approx(1.5625) and score == pytest.approx(1 - 1.5625 / 8)
    assert tempo_relation(128.0, 145.0)[2] == 0.0                    # +13 %: out of a pitch fader's range


def test_ranking_blends_similarity_camelot_and_half_double_tempo(styled):
    rows = {r["content_hash"]: dict(r) for r in styled["rows"]}
    vectors = np.stack([e.vector for e in styled["whole"]])
    index = SimilarityIndex.build(list(rows), vectors)
    ref = rows["h0"]                                                 # house, 124 BPM, 8A
    baseline = {s.content_hash: s for s in suggest_for(ref, index, rows, n=7)}
    assert set(baseline) == set(rows) - {"h0"}
    assert next(iter(baseline)) == "h1"                              # the other house track leads
    # A dnb track (7A, 172 BPM: a neighbour key, tempo out of reach) given the reference's key and exactly
    # double its tempo climbs by the key and tempo terms, and says why.
    assert baseline["h2"].key_score == 0.85 and baseline["h2"].tempo_score == 0.0
    assert "8A→7A (-1)" in baseline["h2"].reason
    rows["h2"].update(camelot="8A", bpm=248.0)
    rows["h3"].update(camelot="3B", bpm=140.0)                        # a clash, +12.9 %: last
    ranked = suggest_for(ref, index, rows, n=7)
    moved = next(s for s in ranked if s.content_hash == "h2")
    assert moved.score == pytest.approx(baseline["h2"].score + 0.3 * (1.0 - 0.85) + 0.2 * 0.9)
    assert moved.tempo_factor == 2.0 and moved.tempo_score == pytest.approx(0.9)
    assert "8A→8A (same key)" in moved.reason and "double tempo +0.0 %" in moved.reason
    clash = next(s for s in ranked if s.content_hash == "h3")
    assert clash.key_score == 0.0 and clash.tempo_score == 0.0 and "clash" in clash.reason
    assert ranked[-1].content_hash == "h3"
    top = ranked[0]
    assert top.reason.startswith("similar ") and "8A→8B (relative)" in top.reason and "tempo +2.4 %" in top.reason
    assert [s.score for s in ranked] == sorted((s.score for s in ranked), reverse=True)


# --------------------------------------------------------------------------- a real crate

CRATE_TRACKS = [  # file, title, artist, style, bpm, tonic, mode, seed
    ("house-one.wav", "House One", "Ann", "house", 124.0, 9, "minor", 21),
    ("house-two.wav", "House Two", "Ann", "house", 126.0, 4, "minor", 22),
    ("house-three.wav", "House Three", "Bob", "house", 122.0, 0, "major", 23),
    ("dnb.wav", "Low Orbit", "Cid", "dnb", 174.0, 9, "minor", 25),
    ("hiphop.wav", "Slow Lane", "Bob", "hiphop", 87.0, 9, "minor", 26),
]
SHORT = [["intro", 2], ["verse", 2], ["chorus", 2], ["outro", 2]]


def _write(path, mix, title, artist) -> None:
    with sf.SoundFile(str(path), "w", samplerate=SAMPLE_RATE, channels=2, subtype="PCM_16") as f:
        f.title, f.artist = title, artist
        f.write(mix)


@pytest.fixture(scope="module")
def crate_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("similarity") / "crate"
    (folder / "sub").mkdir(parents=True)
    for name, title, artist, style, bpm, tonic, mode, seed in CRATE_TRACKS:
        g = generate(TrackSpec(bpm=bpm, beats_per_bar=3 if style == "waltz" else 4, tonic=tonic, mode=mode,
                               style=style, seed=seed, structure=SHORT))
        _write(folder / "sub" / name, g.mix, title, artist)
        if name == "house-one.wav":
            # The same recording again, 1 dB quieter: another content hash, a near-identical embedding.
            _write(folder / "house-one-copy.wav", g.mix * 10 ** (-1 / 20), "House One (copy)", "Eve")
    report = prep_crate(folder, workers=1, progress=False, separator=None)
    assert report.new == len(CRATE_TRACKS) + 1 and not report.failed
    assert report.steps["embed"] == report.new
    return folder


def _hashes(folder) -> dict[str, str]:
    with Crate(default_db_path(folder), readonly=True) as crate:
        return {t["title"]: t["content_hash"] for t in crate.list_tracks()}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = ate_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_prep_stores_embeddings_and_the_index_is_cached(crate_dir):
    hashes = _hashes(crate_dir)
    with Crate(default_db_path(crate_dir), readonly=True) as crate:
        vector, features = get_embedding(crate, hashes["House One"])
        assert vector.shape == (DIM,) and features["source"] == "mix"
        row = crate.connection.execute("SELECT version, dim, length(vector) FROM embeddings LIMIT 1").fetchone()
        assert tuple(row) == (EMBED_VERSION, DIM, 4 * DIM)
        index = open_index(crate)
        assert len(index) == len(hashes) and index.kind == "flat"
        cached = (crate_dir / ".ate" / INDEX_FILE).stat().st_mtime_ns
        again = open_index(crate)                                  # current: read back, not rebuilt
        assert (crate_dir / ".ate" / INDEX_FILE).stat().st_mtime_ns == cached
        assert again.hashes == index.hashes
        np.testing.assert_array_equal(again.vector(hashes["Low Orbit"]), vector_of(crate, hashes["Low Orbit"]))
        # The copy is the original's near-twin, and nothing else is.
        cos = float(index.vector(hashes["House One"]) @ index.vector(hashes["House One (copy)"]))
        assert cos > 0.995
        scores, _ = index.search(index.vector(hashes["House One"]), 3)
        assert scores[0][2] < 0.99


def vector_of(crate, content_hash: str) -> np.ndarray:
    return get_embedding(crate, content_hash)[0]


def test_suggest_cli_ranks_with_reasons(crate_dir, capsys):
    code, out, _ = _run(capsys, "suggest", "House One", "--crate", crate_dir, "-n", "4", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["track"]["title"] == "House One"
    titles = [s["title"] for s in result["suggestions"]]
    assert len(titles) == 4 and "House One" not in titles and "House One (copy)" not in titles
    assert titles[0].startswith("House")                            # another house track first
    for s in result["suggestions"]:
        assert s["reason"].count(";") == 2 and "→" in s["reason"] and "tempo" in s["reason"]
    # Every reason tells the key and tempo moves between the crate's analysed keys and tempos.
    code, out, _ = _run(capsys, "suggest", "Slow Lane", "--crate", crate_dir, "-n", "7", "--json")
    result = json.loads(out)
    ref = result["track"]
    assert len(result["suggestions"]) == 4                  # all but itself, and House One once (not its copy)
    for s in result["suggestions"]:
        factor, pct, tempo_score = tempo_relation(ref["bpm"], s["bpm"])
        key_score, key_words = key_relation(ref["camelot"], s["camelot"])
        words = {1.0: "tempo", 2.0: "double tempo", 0.5: "half tempo"}[factor]
        assert s["reason"].endswith(f"; {key_words}; {words} {pct:+.1f} %")
        assert s["score"] == pytest.approx(0.5 * s["similarity"] + 0.3 * key_score + 0.2 * tempo_score, abs=1e-3)
    # The readable table, found from the file's path (its crate found above it).
    code, out, _ = _run(capsys, "suggest", crate_dir / "sub" / "house-two.wav", "-n", "2")
    assert code == 0 and out.startswith("after House Two (") and len(out.strip().splitlines()) == 3
    code, _, err = _run(capsys, "suggest", "No Such Track", "--crate", crate_dir)
    assert code == 2 and "no track matches 'No Such Track'" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "suggest", "x", "--crate", crate_dir / "sub")
    assert code == 2 and "no crate database" in err


def test_playlist_avoids_duplicates_and_artist_runs_saves_and_exports(crate_dir, capsys, tmp_path):
    m3u = tmp_path / "lists" / "set.m3u"
    code, out, _ = _run(capsys, "playlist", "House One", "House Two", "-n", "5", "--crate", crate_dir,
                        "--name", "warm up", "--m3u", m3u, "--json")
    assert code == 0
    result = json.loads(out)
    tracks = result["tracks"]
    titles = [t["title"] for t in tracks]
    assert titles[:2] == ["House One", "House Two"] and len(titles) == 5
    assert "House One (copy)" not in titles and len(set(titles)) == 5
    artists = [t["artist"] for t in tracks]
    # The seeds are both Ann's (the person chose them); after that no artist twice in a row.
    assert all(a != b for a, b in zip(artists[1:], artists[2:]))
    assert tracks[2]["artist"] != "Ann" and all(t["reason"] for t in tracks)
    # Saved in the crate, in order.
    with Crate(default_db_path(crate_dir), readonly=True) as crate:
        saved = load_playlist(crate, "warm up")
    assert [t["title"] for t in saved] == titles
    # The M3U reads back: durations, titles, paths relative to its folder that lead to the files.
    text = m3u.read_text()
    assert text.startswith("#EXTM3U\n#EXTINF:") and "../" in text and str(crate_dir) not in text
    entries = read_m3u(m3u)
    assert [e["path"] for e in entries] == [Path(t["abs_path"]).resolve() for t in saved]
    assert all(e["path"].exists() for e in entries)
    assert [e["title"] for e in entries] == [f"{t['artist']} - {t['title']}" for t in saved]
    assert [e["duration_s"] for e in entries] == [round(t["duration_s"]) for t in saved]
    # A second playlist of the same name replaces the first.
    code, out, _ = _run(capsys, "playlist", "Low Orbit", "-n", "3", "--crate", crate_dir, "--name", "warm up")
    assert code == 0 and 'playlist "warm up": 3 tracks' in out
    with Crate(default_db_path(crate_dir), readonly=True) as crate:
        assert [t["title"] for t in load_playlist(crate, "warm up")][0] == "Low Orbit"
        assert crate.connection.execute("SELECT count(*) FROM playlists WHERE name = 'warm up'").fetchone()[0] == 1


def test_playlist_without_another_artist_left_still_grows(crate_dir):
    with Crate(default_db_path(crate_dir), readonly=True) as crate:
        rows = {t["content_hash"]: t for t in crate.list_tracks() if t["artist"] == "Ann"}
        index = open_index(crate)
    chosen = make_playlist(index, rows, [next(iter(rows))], n=5)
    assert len(chosen) == 2                                         # Ann's two tracks, then the crate runs out


def test_m3u_paths_are_relative_where_they_share_a_folder(crate_dir, tmp_path):
    with Crate(default_db_path(crate_dir), readonly=True) as crate:
        rows = crate.list_tracks()[:2]
    path = write_m3u(tmp_path / "x.m3u8", rows)
    lines = path.read_text().splitlines()
    assert lines[1].startswith("#EXTINF:") and not lines[2].startswith("/")          # both under /tmp
    assert read_m3u(path)[0]["path"] == Path(rows[0]["abs_path"]).resolve()
    # Sharing only the filesystem root, a path stays absolute (a relative one would break on any move).
    assert m3u_path(Path("/usr/share/music/x.wav"), tmp_path) == "/usr/share/music/x.wav"


def test_a_stale_index_is_rebuilt_when_a_track_is_added(crate_dir, tmp_path):
    folder = tmp_path / "crate"
    shutil.copytree(crate_dir, folder)
    with Crate(default_db_path(folder), readonly=True) as crate:
        before = open_index(crate)
    meta = json.loads((folder / ".ate" / META_FILE).read_text())
    assert meta["fingerprint"] == before.fingerprint and len(meta["hashes"]) == len(before)
    g = generate(TrackSpec(bpm=128.0, tonic=9, mode="minor", style="house", seed=31, structure=SHORT))
    _write(folder / "sub" / "new.wav", g.mix, "Newcomer", "Fay")
    report = prep_crate(folder, workers=1, progress=False, separator=None)
    assert report.new == 1 and report.steps["embed"] == 1
    with Crate(default_db_path(folder), readonly=True) as crate:
        after = open_index(crate)
        new_hash = next(t["content_hash"] for t in crate.list_tracks() if t["title"] == "Newcomer")
    assert len(after) == len(before) + 1 and new_hash in after.row
    assert after.fingerprint != before.fingerprint
    assert json.loads((folder / ".ate" / META_FILE).read_text())["fingerprint"] == after.fingerprint
    # A damaged cache is rebuilt, not trusted.
    (folder / ".ate" / INDEX_FILE).write_bytes(b"not an index")
    with Crate(default_db_path(folder), readonly=True) as crate:
        assert open_index(crate).hashes == after.hashes


def test_bench_similarity_quick_structure():
    from prep.bench_similarity import bench_similarity

    result = bench_similarity(quick=True)
    json.dumps(result)
    assert result["tracks"] == 4 and result["labels"] == {"house": 2, "dnb": 2}
    for side in ("ate", "mfcc_baseline"):
        assert 0.0 <= result["halves"][side]["top1"] <= result["halves"][side]["top10"] <= 1.0
        assert -1.0 <= result["genre"][side]["silhouette"] <= 1.0
    assert result["cost"]["embed_cpu_s"] > 0 and result["cost"]["analysis_cpu_s"] > 0
    assert set(result["latency"]["sizes"]) == {"1000", "10000"}
    assert 0.0 < result["latency"]["sizes"]["1000"]["ivf_recall_at_10"] <= 1.0
