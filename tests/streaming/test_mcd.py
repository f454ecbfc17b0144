"""MCD on signals whose answer is known, the mel-cepstrum against its definition on the warped
axis, and the vectorised DTW against a plain double loop on fresh random inputs."""

import time

import numpy as np
import pytest

from s2s.streaming.mcd import dtw, mel_cepstral_distortion, mel_cepstrum, warped_cepstrum_matrix

RATE = 16000
ALPHA = 0.42
DB = 10.0 / np.log(10.0)


def _seed() -> int:
    return int(np.random.SeedSequence().entropy % 2**32)


def _warped(omega: np.ndarray, alpha: float) -> np.ndarray:
    """Phase of the all-pass z~^-1 = (z^-1 - alpha) / (1 - alpha z^-1): the warped frequency."""
    return omega + 2.0 * np.arctan(alpha * np.sin(omega) / (1.0 - alpha * np.cos(omega)))


def _log_response(coefficients: np.ndarray, bins: int, alpha: float = ALPHA) -> np.ndarray:
    """log|H| on an rfft grid for the SPTK mel-cepstrum `coefficients`: sum_m c_m cos(m w~)."""
    omega = np.linspace(0.0, np.pi, bins)
    return np.cos(np.outer(_warped(omega, alpha), np.arange(len(coefficients)))) @ coefficients


def _reference_dtw(a: np.ndarray, b: np.ndarray, band: int | None) -> tuple[float, int]:
    """The textbook recursion over a full float64 table; of equally cheap paths, the shortest."""
    n, m = len(a), len(b)
    best = {(0, 0): (0.0, 0)}  # (i, j) -> (cost, cells) of the path ending at frame pair (i-1, j-1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            outside = abs((i - 1) * (m - 1) - (j - 1) * (n - 1)) > (band or 0) * max(n - 1, m - 1)
            if band is not None and n > 1 and m > 1 and outside:
                continue
            options = [best[p] for p in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if p in best]
            if options:
                cost, cells = min(options)
                best[i, j] = (cost + float(np.sqrt(((a[i - 1] - b[j - 1]) ** 2).sum())), cells + 1)
    return best[n, m]


def test_dtw_matches_a_double_loop_on_random_inputs():
    seed = _seed()
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (1, 7), (9, 1), (2, 2), *[tuple(rng.integers(2, 40, size=2)) for _ in range(12)]]
    for n, m in shapes:
        a, b = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
        for band in (None, 1, 3):
            found, expected = dtw(a, b, band=band), _reference_dtw(a, b, band)
            message = f"seed {seed}, shapes {n}x{m}, band {band}: {found} vs {expected}"
            assert found[0] == pytest.approx(expected[0], rel=1e-9, abs=1e-9), message
            assert found[1] == expected[1], message


def test_dtw_of_a_sequence_against_its_repetition_costs_nothing():
    a = np.random.default_rng(3).normal(size=(50, 4))
    total, length = dtw(a, np.repeat(a, 2, axis=0))
    assert total == pytest.approx(0.0, abs=1e-6) and length == 100
    with pytest.raises(ValueError, match="equal dims"):
        dtw(a, a[:, :2])


def test_mel_cepstrum_matrix_against_the_warped_axis_definition():
    # a log spectrum that is exactly a truncated warped cosine series has those coefficients
    seed = _seed()
    rng = np.random.default_rng(seed)
    coefficients = rng.normal(size=25) / (1.0 + np.arange(25))
    found = _log_response(coefficients, 513) @ warped_cepstrum_matrix(1024, 24, ALPHA)
    assert np.allclose(found, coefficients, atol=1e-6), f"seed {seed}: {np.abs(found - coefficients).max()}"


def test_identical_audio_and_a_gain_give_zero():
    audio = _speechlike(np.random.default_rng(0), [0.15] * 10)
    assert mel_cepstral_distortion(audio, audio) == pytest.approx(0.0, abs=1e-6)
    assert mel_cepstral_distortion(audio, 0.25 * audio) == pytest.approx(0.0, abs=1e-3)  # c0 only


def test_a_known_mel_cepstral_offset_gives_the_analytic_value():
    seed = _seed()
    rng = np.random.default_rng(seed)
    audio = rng.normal(size=4 * RATE) * 0.1
    offset = np.zeros(25)
    offset[0], offset[1:5] = 0.7, rng.uniform(-0.3, 0.3, size=4)  # c0 is a level change: not counted
    spectrum = np.fft.rfft(audio)
    filtered = np.fft.irfft(spectrum * np.exp(_log_response(offset, len(spectrum))), n=len(audio))
    expected = DB * np.sqrt(2.0 * (offset[1:] ** 2).sum())
    found = mel_cepstral_distortion(audio, filtered)
    assert found == pytest.approx(expected, rel=0.005), f"seed {seed}: {found:.3f} dB vs {expected:.3f} dB"


def _speechlike(rng: np.random.Generator, durations: list[float], envelopes=None) -> np.ndarray:
    """Vowel-like segments: a 120 Hz pulse train through a per-segment mel-cepstral envelope."""
    if envelopes is None:
        envelopes = [rng.normal(size=9) * 1.2 / (1.0 + np.arange(9)) for _ in durations]
    parts, pulse_phase = [], 0
    for seconds, envelope in zip(durations, envelopes, strict=True):
        samples = round(seconds * RATE)
        excitation = np.zeros(samples)
        excitation[(np.arange(samples) + pulse_phase) % (RATE // 120) == 0] = 1.0
        pulse_phase = (pulse_phase + samples) % (RATE // 120)
        spectrum = np.fft.rfft(excitation)
        parts.append(np.fft.irfft(spectrum * np.exp(_log_response(envelope, len(spectrum))), n=samples))
    audio = np.concatenate(parts)
    return 0.5 * audio / np.abs(audio).max()


def test_time_stretched_copies_are_close_under_dtw():
    seed = _seed()
    rng = np.random.default_rng(seed)
    durations = rng.uniform(0.08, 0.2, size=12).tolist()
    envelopes = [rng.normal(size=9) * 1.2 / (1.0 + np.arange(9)) for _ in durations]
    audio = _speechlike(rng, durations, envelopes)
    stretched = _speechlike(rng, [1.3 * d for d in durations], envelopes)
    other = _speechlike(rng, durations)  # same rhythm and pitch, other envelopes
    same, different = mel_cepstral_distortion(audio, stretched), mel_cepstral_distortion(audio, other)
    unaligned = (
        DB
        * np.sqrt(2.0)
        * np.mean(
            np.linalg.norm(
                mel_cepstrum(audio)[:, 1:] - mel_cepstrum(stretched)[: len(mel_cepstrum(audio)), 1:], axis=1
            )
        )
    )
    message = f"seed {seed}: stretched {same:.2f} dB, unaligned {unaligned:.2f} dB, other {different:.2f} dB"
    assert same < 1.0 and same < 0.2 * unaligned and same < 0.2 * different, message


def test_silence_is_dropped_before_alignment():
    audio = _speechlike(np.random.default_rng(1), [0.15] * 8)
    quiet = np.zeros(RATE)
    padded = np.concatenate([quiet, audio, quiet])
    noisy_pad = np.concatenate([1e-4 * np.random.default_rng(2).normal(size=RATE), audio])
    assert mel_cepstral_distortion(audio, padded) < 0.1  # only the frames across the edges differ
    assert mel_cepstral_distortion(audio, noisy_pad) < 0.1
    assert mel_cepstral_distortion(audio, noisy_pad, silence_db=None) > 1.0  # noise frames count
    assert np.isnan(mel_cepstral_distortion(audio, quiet)) and np.isnan(
        mel_cepstral_distortion(audio, audio[:100])
    )


def test_a_20_second_pair_takes_well_under_a_second():
    rng = np.random.default_rng(4)
    reference = _speechlike(rng, [0.2] * 100)
    predicted = _speechlike(rng, [0.2] * 100)
    start = time.perf_counter()
    value = mel_cepstral_distortion(reference, predicted, silence_db=None)  # all 4000 x 4000 cells
    seconds = time.perf_counter() - start
    assert np.isfinite(value)
    assert seconds < 3.0, (
        f"20 s pair took {seconds:.2f} s (a sanity bound on a shared machine, not a benchmark)"
    )
