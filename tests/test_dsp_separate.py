"""The weight-free separator on generated tracks with true stems, and its scores."""

from __future__ import annotations

import numpy as np
import pytest

from prep.audio import SAMPLE_RATE
from prep.dsp_separate import STEM_NAMES, DspSeparator, separation_scores
from prep.synth import STEMS, TrackSpec, generate

DRUMS, BASS, VOCALS, OTHER = range(4)


@pytest.fixture(scope="module")
def track():
    """A 16.5 s house track (4 verse + 4 chorus bars: every stem plays) separated once."""
    g = generate(TrackSpec(bpm=124, style="house", seed=3, structure=[["verse", 4], ["chorus", 4]]))
    true = np.stack([g.stems[k] for k in STEMS])
    mix = g.mix
    sep = DspSeparator()
    parts = sep.separate_components(mix, true)
    return {"mix": mix, "true": true, "est": sep.separate(mix), "parts": parts,
            "scores": separation_scores(true, parts.sum(axis=0), parts=parts)}


# --------------------------------------------------------------------------- shape and identity

def test_stem_names_match_generator():
    assert STEM_NAMES == STEMS


def test_output_shape_dtype_and_length(track):
    est = track["est"]
    assert est.shape == (4,) + track["mix"].shape
    assert est.dtype == np.float32
    assert np.all(np.isfinite(est))


def test_stems_sum_to_the_mix(track):
    assert np.max(np.abs(track["est"].sum(axis=0) - track["mix"])) < 1e-5


def test_components_decompose_the_mix_exactly(track):
    parts = track["parts"]
    # Each true stem is split among the four estimates without loss ...
    assert np.max(np.abs(parts.sum(axis=1) - track["true"])) < 1e-5
    # ... and the masks are linear, so the parts add up to the mix's separation.
    assert np.max(np.abs(parts.sum(axis=0) - track["est"])) < 1e-5


def test_block_size_leaves_no_trace(track):
    mix = track["mix"][: 6 * SAMPLE_RATE]
    small = DspSeparator(block_frames=40).separate(mix)
    whole = DspSeparator(block_frames=100_000).separate(mix)
    assert np.max(np.abs(small - whole)) < 1e-5


@pytest.mark.parametrize("n_fft, hop", [(4096, 1024), (2048, 1024), (1024, 256)])
def test_odd_lengths_keep_their_length(n_fft, hop):
    rng = np.random.default_rng(0)
    for n in (0, 1, 1023, 1025, 4097, 30_001):
        x = (0.1 * rng.standard_normal((n, 2))).astype(np.float32)
        y = DspSeparator(n_fft, hop).separate(x)
        assert y.shape == (4, n, 2)
        assert np.all(np.isfinite(y))
        assert np.max(np.abs(y.sum(axis=0) - x), initial=0.0) < 1e-5


# --------------------------------------------------------------------------- where the energy goes

def test_drums_stem_holds_most_of_the_drums(track):
    share = track["scores"]["energy_share"][DRUMS]
    assert share[DRUMS] > max(share[BASS], share[VOCALS], share[OTHER])
    assert share[DRUMS] > 0.5


def test_bass_stem_holds_most_of_the_bass(track):
    share = track["scores"]["energy_share"][BASS]
    assert share[BASS] > 0.5


def test_vocals_stem_beats_the_quarter_baseline(track):
    # Every stem = mix / 4 puts exactly a quarter of each true stem in each estimate.
    quarter = separation_scores(track["true"], np.broadcast_to(track["mix"] / 4, track["true"].shape))
    assert quarter["energy_share"][VOCALS][VOCALS] == pytest.approx(0.25, abs=1e-6)
    assert track["scores"]["energy_share"][VOCALS][VOCALS] > 0.5


def test_every_stem_scores_better_sdr_than_the_quarter_baseline(track):
    quarter = separation_scores(track["true"], np.broadcast_to(track["mix"] / 4, track["true"].shape))
    for name in STEM_NAMES:
        assert track["scores"]["sdr"][name] > quarter["sdr"][name] + 1.0, name


def test_kick_model_moves_the_kick_out_of_the_bass(track):
    plain = DspSeparator(kick=False).separate_components(track["mix"], track["true"][:1])[0]
    with_kick = track["parts"][DRUMS]
    drum_energy = float(np.sum(track["true"][DRUMS].astype(np.float64) ** 2))
    in_drums = lambda part: float(np.sum(part[DRUMS] * track["true"][DRUMS])) / drum_energy  # noqa: E731
    assert in_drums(with_kick) > in_drums(plain) + 0.2


# --------------------------------------------------------------------------- edge cases

def test_silence_in_silence_out():
    y = DspSeparator().separate(np.zeros((2 * SAMPLE_RATE, 2), np.float32))
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y)) == 0.0


def test_mono_as_stereo_gives_identical_channels(track):
    mono = track["mix"][: 5 * SAMPLE_RATE].mean(axis=1)
    y = DspSeparator().separate(np.stack([mono, mono], axis=1))
    assert np.array_equal(y[..., 0], y[..., 1])
    assert np.max(np.abs(y.sum(axis=0) - mono[:, None])) < 1e-5
    # 1-D input means the same thing.
    assert np.array_equal(DspSeparator().separate(mono), y)


def test_very_short_input(track):
    x = track["mix"][SAMPLE_RATE: SAMPLE_RATE + SAMPLE_RATE // 2]
    y = DspSeparator().separate(x)
    assert y.shape == (4, x.shape[0], 2)
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y.sum(axis=0) - x)) < 1e-5


def test_progress_reaches_one(track):
    seen: list[float] = []
    DspSeparator(block_frames=64).separate(track["mix"][: 4 * SAMPLE_RATE], progress=seen.append)
    assert len(seen) > 1
    assert seen == sorted(seen)
    assert seen[-1] == 1.0


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        DspSeparator().separate(np.zeros((100, 3, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        DspSeparator().separate(np.full((100, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="multiple of hop"):
        DspSeparator(n_fft=4096, hop=1000)
    with pytest.raises(ValueError, match="at least 2 hops"):
        DspSeparator(n_fft=1024, hop=1024)


# --------------------------------------------------------------------------- metric definitions

def test_scores_of_known_estimates():
    rng = np.random.default_rng(1)
    true = (0.1 * rng.standard_normal((4, 20_000, 2))).astype(np.float32)
    perfect = separation_scores(true, true)
    assert all(v > 100 for v in perfect["sdr"].values())
    assert np.allclose(perfect["energy_share"], np.eye(4), atol=0.02)  # independent noise: cross-terms ~1/sqrt(n)
    half = separation_scores(true, 0.5 * true)
    # |s - s/2|^2 = |s|^2 / 4: 6.02 dB; a gain error costs nothing in SI-SDR.
    assert all(v == pytest.approx(20 * np.log10(2), abs=1e-6) for v in half["sdr"].values())
    assert all(v > 100 for v in half["si_sdr"].values())
    silent = separation_scores(true, np.zeros_like(true))
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in silent["sdr"].values())


def test_silent_true_stem_has_no_score():
    true = np.zeros((4, 1000, 2), np.float32)
    true[0, ::7] = 0.5
    out = separation_scores(true, true)
    assert out["sdr"]["bass"] is None and out["energy_share"][BASS] is None
    assert out["energy_share"][DRUMS] == pytest.approx([1.0, 0.0, 0.0, 0.0])
