"""Seeded perturbations: reproducible from (seed, iteration, rank, k) alone."""

from __future__ import annotations

import numpy as np
import pytest

from hes_mpi import noise

N = 4096


def test_reproducible_and_float32():
    a = noise.standard_normal(7, 12, 3, 1, N)
    b = noise.standard_normal(7, 12, 3, 1, N)
    assert a.dtype == np.float32
    assert a.shape == (N,)
    np.testing.assert_array_equal(a, b)


def test_order_of_draws_does_not_matter():
    """No state carried between draws: drawing other perturbations in between changes nothing."""
    first = noise.standard_normal(0, 5, 1, 2, N)
    for k in range(4):
        noise.standard_normal(0, 5, 1, k, N)
    np.random.seed(99)
    np.random.standard_normal(10)
    np.testing.assert_array_equal(noise.standard_normal(0, 5, 1, 2, N), first)


@pytest.mark.parametrize("changed", [(1, 12, 3, 1), (7, 13, 3, 1), (7, 12, 4, 1), (7, 12, 3, 2), (7, 0, 0, 0)])
def test_differs_when_any_key_changes(changed):
    base = noise.standard_normal(7, 12, 3, 1, N)
    other = noise.standard_normal(*changed, N)
    assert not np.array_equal(base, other)
    # not merely shifted or correlated
    assert abs(np.corrcoef(base, other)[0, 1]) < 0.1


def test_keys_are_not_confused_with_each_other():
    """Swapping values between key fields gives a different stream."""
    streams = {noise.standard_normal(*key, 64).tobytes() for key in
               [(1, 2, 3, 4), (2, 1, 3, 4), (1, 3, 2, 4), (1, 2, 4, 3), (4, 3, 2, 1)]}
    assert len(streams) == 5


def test_prefix_property():
    """A shorter draw is the prefix of a longer one from the same key (the stream depends only on the key)."""
    long = noise.standard_normal(1, 2, 3, 4, 1000)
    short = noise.standard_normal(1, 2, 3, 4, 100)
    np.testing.assert_array_equal(short, long[:100])


def test_roughly_standard_normal():
    z = noise.standard_normal(0, 0, 0, 0, 200_000).astype(np.float64)
    assert np.isfinite(z).all()
    assert abs(z.mean()) < 0.015
    assert z.std() == pytest.approx(1.0, abs=0.01)
    assert np.mean(np.abs(z) < 1.0) == pytest.approx(0.6827, abs=0.01)
    assert np.mean(np.abs(z) < 2.0) == pytest.approx(0.9545, abs=0.005)
    skew = np.mean(((z - z.mean()) / z.std()) ** 3)
    kurt = np.mean(((z - z.mean()) / z.std()) ** 4)
    assert abs(skew) < 0.05
    assert kurt == pytest.approx(3.0, abs=0.1)


def test_out_argument():
    want = noise.standard_normal(3, 1, 0, 5, N)
    out = np.full(N, np.nan, np.float32)
    got = noise.standard_normal(3, 1, 0, 5, N, out=out)
    assert got is out
    np.testing.assert_array_equal(out, want)


def test_out_longer_than_n_fills_only_prefix():
    want = noise.standard_normal(3, 1, 0, 5, 100)
    out = np.full(150, -1.0, np.float32)
    got = noise.standard_normal(3, 1, 0, 5, 100, out=out)
    assert got is out
    np.testing.assert_array_equal(out[:100], want)
    np.testing.assert_array_equal(out[100:], -1.0)


def test_perturbation_key():
    assert noise.perturbation_key(1, 2, 3, 4)[1:] == (1, 2, 3, 4)
    assert all(isinstance(v, int) for v in noise.perturbation_key(np.int64(1), np.int32(2), 3, 4))
    # numpy integer keys draw the same stream as Python ints
    np.testing.assert_array_equal(noise.standard_normal(np.int64(1), np.int32(2), np.int16(3), np.uint8(4), 50),
                                  noise.standard_normal(1, 2, 3, 4, 50))


def test_table_offsets_are_reproducible_and_spread():
    offs = [noise.table_offset(0, i, r, k, 1000, 1 << 40) for i in range(50) for r in range(4) for k in range(8)]
    assert len(set(offs)) == 50 * 4 * 8  # distinct keys, distinct offsets (no collision in 2**40)
    small = np.array([noise.table_offset(0, i, r, k, 1000, 1 << 20) for i in range(50) for r in range(4)
                      for k in range(8)])
    assert small.min() >= 0 and small.max() <= (1 << 20) - 1000
    assert 0.4 < small.mean() / ((1 << 20) - 1000) < 0.6  # spread over the table
    assert noise.table_offset(3, 4, 5, 6, 1000, 1 << 20) == noise.table_offset(3, 4, 5, 6, 1000, 1 << 20)
    assert noise.table_offset(3, 4, 5, 6, 1000, 1 << 20) != noise.table_offset(4, 4, 5, 6, 1000, 1 << 20)


def test_table_perturbations_are_standard_normal_views():
    p = noise.Perturbations("table", 0, 5000)
    z = p.get(1, 0, 2)
    assert z.dtype == np.float32 and z.shape == (5000,)
    assert np.shares_memory(z, p._table.table)  # no copy
    assert np.array_equal(z, noise.Perturbations("table", 0, 5000).get(1, 0, 2))  # same on every rank
    t = p._table.table
    assert abs(float(t.mean())) < 0.01 and abs(float(t.std()) - 1) < 0.01
    assert not np.array_equal(z, p.get(1, 0, 3))


def test_philox_source_matches_standard_normal():
    p = noise.Perturbations("philox", 7, 300)
    np.testing.assert_array_equal(p.get(2, 1, 0), noise.standard_normal(7, 2, 1, 0, 300))
