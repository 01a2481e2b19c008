"""The counter-based noise kernels (hes_mpi/philox_kernels.py) against the plain NumPy reference in tests/naive.py
and Random123's known answers: the Philox4x32-10 words bitwise, the Box-Muller normals within a few float32
ulps of float64 (every one of the 2^24 radii and 2^24 angles), chunks equal to the whole bitwise."""

from __future__ import annotations

import itertools

import naive
import numpy as np
import pytest

from hes_mpi import philox_kernels as pk

M32 = 0xFFFFFFFF
#: Random123's kat_vectors for philox4x32 with 10 rounds: (counter, key, output), each checked against the
#: independent NumPy reference too.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
#: Bounds on the float32 normals' error against float64 (ulps of the float64 value rounded to float32): the
#: radius sqrt(-2 ln u) (Cephes' logf and an IEEE sqrt), and radius times cos or sin (Cephes' sinf, cosf).
RADIUS_ULPS, NORMAL_ULPS = 1.0, 4.0


def ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in units of the float32 spacing at |want| (want in float64)."""
    return np.abs(got.astype(np.float64) - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)


def philox(counters, key) -> np.ndarray:
    counters = np.asarray(counters, dtype=np.uint64).astype(np.uint32).reshape(-1, 4)
    out = np.empty_like(counters)
    pk.philox4x32(counters, np.asarray(key, dtype=np.uint64).astype(np.uint32), out)
    return out


@pytest.mark.parametrize(("counter", "key", "want"), KAT, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, want):
    assert tuple(int(w) for w in naive.philox4x32(np.array([counter], np.uint64), key)[0]) == want
    assert tuple(int(w) for w in philox([counter], key)[0]) == want


def test_philox_equals_the_numpy_reference_bitwise():
    rng = np.random.default_rng(20)
    counters = rng.integers(0, 1 << 32, (5000, 4), dtype=np.uint64)
    counters[:8] = [[0, 0, 0, 0], [1, 0, 0, 0], [M32, 0, 0, 0], [0, M32, 0, 0], [0, 0, M32, 0], [0, 0, 0, M32],
                    [M32, M32, M32, M32], [M32, 1, 2, 3]]
    for key in [(0, 0), (1, 0), (0, 1), (M32, M32), tuple(rng.integers(0, 1 << 32, 2))]:
        np.testing.assert_array_equal(philox(counters, key), naive.philox4x32(counters, key))


def test_stream_words_are_philox_of_the_element_index_over_four():
    """fill_normals's normals come from the words of Philox4x32-10 of the counter (j // 4, c1, c2, c3)."""
    key, hi = np.array([7, 9], np.uint32), np.array([3, 1, 4], np.uint32)
    n = 4 * pk.TILE + 10  # more than one tile
    got = np.empty(n, np.float32)
    pk.fill_normals(got, key, hi, 0)
    words = naive.counter_words(key, hi, 0, n + 2)
    want = np.empty(n + 2, np.float32)
    pk.box_muller(words, want)  # (the transform itself is checked against float64 below)
    np.testing.assert_array_equal(got, want[:n])
    ref = naive.box_muller(words)[:n]
    assert ulps(got, ref).max() <= NORMAL_ULPS


def radius_words(k: np.ndarray, angle: int) -> np.ndarray:
    w = np.empty(2 * k.size, np.uint32)
    w[0::2] = k.astype(np.uint32) << np.uint32(8)
    w[1::2] = np.uint32(angle << 8)
    return w


def test_every_radius_within_an_ulp_and_never_nan():
    """All 2^24 uniforms u = (k + 1) 2^-24 in (0, 1]: z0 at angle 0 is the radius sqrt(-2 ln u) itself."""
    step = 1 << 22
    out = np.empty(2 * step, np.float32)
    worst, largest = 0.0, 0.0
    for lo in range(0, 1 << 24, step):
        k = np.arange(lo, lo + step, dtype=np.int64)
        pk.box_muller(radius_words(k, 0), out)
        r, zero = out[0::2], out[1::2]
        want = np.sqrt(-2.0 * np.log((k + 1) / 2.0**24))
        assert np.isfinite(r).all() and (r >= 0).all() and (zero == 0).all()
        nz = want > 0
        assert (r[~nz] == 0).all()  # u = 1: radius 0
        worst = max(worst, float(ulps(r[nz], want[nz]).max()))
        largest = max(largest, float(r.max()))
    assert worst <= RADIUS_ULPS
    assert largest == pytest.approx(np.sqrt(48 * np.log(2.0)), rel=1e-7)  # u = 2^-24: the tails end at 5.77


def test_every_angle_within_a_few_ulps():
    """All 2^24 angles 2 pi t 2^-24 at a fixed radius: (r cos, r sin) against float64, exact zeros at the
    quarter turns."""
    step = 1 << 22
    out = np.empty(2 * step, np.float32)
    k_r = 12345
    pk.box_muller(radius_words(np.array([k_r]), 0), out[:2])
    r = np.float64(out[0])  # the kernel's own radius (checked above)
    worst = 0.0
    for lo in range(0, 1 << 24, step):
        t = np.arange(lo, lo + step, dtype=np.int64)
        w = np.empty(2 * step, np.uint32)
        w[0::2] = np.uint32(k_r << 8)
        w[1::2] = t.astype(np.uint32) << np.uint32(8)
        pk.box_muller(w, out)
        angle = 2.0 * np.pi * t / 2.0**24
        for got, want, exact_zero in ((out[0::2], r * np.cos(angle), t % (1 << 23) == 1 << 22),
                                      (out[1::2], r * np.sin(angle), t % (1 << 23) == 0)):
            assert (got[exact_zero] == 0).all()
            worst = max(worst, float(ulps(got[~exact_zero], want[~exact_zero]).max()))
    assert worst <= NORMAL_ULPS


@pytest.mark.parametrize("start", [0, 1, 2, 3, 4, 5, 4 * pk.TILE - 1, 4 * pk.TILE, 4 * pk.TILE + 3, 10**6 + 1])
def test_chunks_equal_the_whole_bitwise(start):
    key, hi = np.array([11, 0], np.uint32), np.array([2, 0, 5], np.uint32)
    whole = np.empty(start + 3 * 4 * pk.TILE + 7, np.float32)
    pk.fill_normals(whole, key, hi, 0)
    for n in (0, 1, 2, 3, 5, 4 * pk.TILE + 1, whole.size - start):
        part = np.full(n, np.nan, np.float32)
        pk.fill_normals(part, key, hi, start)
        np.testing.assert_array_equal(part.view(np.uint32), whole[start : start + n].view(np.uint32))


def test_chunk_by_chunk_in_any_order_equals_the_whole():
    key, hi = np.array([5, 6], np.uint32), np.array([7, 8, 9], np.uint32)
    n = 20011
    whole = np.empty(n, np.float32)
    pk.fill_normals(whole, key, hi, 0)
    edges = [0, 3, 4, 1000, 4097, 4098, 12000, 19999, n]
    pieces = np.full(n, np.nan, np.float32)
    for a, b in reversed(list(itertools.pairwise(edges))):
        pk.fill_normals(pieces[a:b], key, hi, a)
    np.testing.assert_array_equal(pieces.view(np.uint32), whole.view(np.uint32))


def test_far_blocks_of_the_counter():
    """Word 0 of the counter runs to 2^32 - 1: the last elements of a stream are Philox of that block."""
    key, hi = np.array([1, 2], np.uint32), np.array([3, 4, 5], np.uint32)
    start = pk.MAX_ELEMENTS - 6
    got = np.empty(6, np.float32)
    pk.fill_normals(got, key, hi, start)
    words = naive.philox4x32(np.array([[M32 - 1, 3, 4, 5], [M32, 3, 4, 5]], np.uint64), (1, 2)).reshape(-1)
    want = np.empty(8, np.float32)
    pk.box_muller(words, want)
    np.testing.assert_array_equal(got, want[2:])
