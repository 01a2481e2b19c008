"""Seeded perturbations: reproducible from (seed, iteration, rank, k) alone."""

from __future__ import annotations

import itertools

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


# ---------------------------------------------------------------------------- the counter source
def test_config_names_the_same_sources():
    from hes_mpi.config import NOISES, RunConfig
    from hes_mpi.errors import UsageError

    assert set(NOISES) == set(noise.SOURCES) and len(NOISES) == len(noise.SOURCES)
    assert RunConfig(noise="counter").validate().noise == "counter"
    with pytest.raises(UsageError, match="table, philox, counter"):
        RunConfig(noise="ziggurat").validate()


def test_counter_key_is_the_seed_and_the_counter_the_rest():
    """Documented derivation: Philox4x32-10 key = the seed's 32-bit halves, counter = (j // 4, i, rank, k);
    the normals are the kernel's Box-Muller of those words (tests/naive.py builds the words)."""
    import naive

    from hes_mpi import philox_kernels

    seed = (0xDEADBEEF << 32) | 0x12345678
    key, hi = noise.counter_key(seed, 9, 2, 5)
    assert key.tolist() == [0x12345678, 0xDEADBEEF] and hi.tolist() == [9, 2, 5]
    words = naive.counter_words((0x12345678, 0xDEADBEEF), (9, 2, 5), 0, 1002)
    want = np.empty(1002, np.float32)
    philox_kernels.box_muller(words, want)
    got = noise.counter_normal(seed, 9, 2, 5, 1001)
    np.testing.assert_array_equal(got.view(np.uint32), want[:1001].view(np.uint32))
    assert np.abs(got - naive.box_muller(words)[:1001]).max() < 1e-5


@pytest.mark.parametrize("key", [(-1, 0, 0, 0), (1 << 64, 0, 0, 0), (0, 1 << 32, 0, 0), (0, 0, -1, 0), (0, 0, 0, 1 << 32)])
def test_counter_key_out_of_range_is_an_error(key):
    with pytest.raises(ValueError, match="out of range"):
        noise.counter_key(*key)
    with pytest.raises(ValueError, match="2\\*\\*34"):
        noise.counter_normal(0, 0, 0, 0, 10, start=(1 << 34) - 5)


def test_counter_reproducible_float32_and_prefix():
    a = noise.counter_normal(7, 12, 3, 1, N)
    assert a.dtype == np.float32 and a.shape == (N,)
    np.testing.assert_array_equal(a, noise.counter_normal(7, 12, 3, 1, N))
    np.testing.assert_array_equal(noise.counter_normal(7, 12, 3, 1, 100), a[:100])
    np.testing.assert_array_equal(noise.counter_normal(np.int64(7), np.int32(12), np.int16(3), np.uint8(1), N), a)


def test_counter_chunks_equal_the_whole_bitwise():
    """A perturbation made chunk by chunk (any start, any length, any order) is the whole one, bitwise."""
    whole = noise.counter_normal(3, 4, 1, 6, 238_510)
    out = np.full(whole.size, np.nan, np.float32)
    edges = [0, 1, 7, 4096, 4099, 50_001, 100_000, 238_509, 238_510]
    for a, b in reversed(list(itertools.pairwise(edges))):
        got = noise.counter_normal(3, 4, 1, 6, b - a, out=out[a:b], start=a)
        assert np.shares_memory(got, out)
    np.testing.assert_array_equal(out.view(np.uint32), whole.view(np.uint32))


@pytest.mark.parametrize("changed", [(1, 12, 3, 1), (7, 13, 3, 1), (7, 12, 4, 1), (7, 12, 3, 2), (7, 0, 0, 0),
                                     ((1 << 32) | 7, 12, 3, 1)])
def test_counter_differs_when_any_key_changes(changed):
    base = noise.counter_normal(7, 12, 3, 1, N)
    other = noise.counter_normal(*changed, N)
    assert not np.array_equal(base, other)
    assert abs(np.corrcoef(base, other)[0, 1]) < 0.1


def test_counter_keys_are_not_confused_with_each_other():
    streams = {noise.counter_normal(*key, 64).tobytes() for key in
               [(1, 2, 3, 4), (2, 1, 3, 4), (1, 3, 2, 4), (1, 2, 4, 3), (4, 3, 2, 1), (1 << 32, 2, 3, 4)]}
    assert len(streams) == 6


#: The KS tests' bound on the p-value (fixed keys: the statistics are fixed numbers, each well above it).
KS_P_BOUND = 0.01


def test_counter_is_standard_normal():
    """2^20 values of one perturbation: Kolmogorov-Smirnov against N(0, 1) (p > 0.01), mean within 5 standard
    errors of 0, variance within 5 of 1, the normal's mass within 1 and 2, its skewness and kurtosis; each of
    the four normals of a block alone (KS), and the two of a Box-Muller pair uncorrelated."""
    from scipy import stats

    n = 1 << 20
    z = noise.counter_normal(0, 1, 0, 0, n).astype(np.float64)
    assert np.isfinite(z).all() and np.abs(z).max() <= 5.77
    assert stats.kstest(z, "norm").pvalue > KS_P_BOUND
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert np.mean(np.abs(z) < 1.0) == pytest.approx(0.6827, abs=0.003)
    assert np.mean(np.abs(z) < 2.0) == pytest.approx(0.9545, abs=0.002)
    assert abs(stats.skew(z)) < 0.02 and abs(stats.kurtosis(z)) < 0.04
    for lane in range(4):
        assert stats.kstest(z[lane::4], "norm").pvalue > KS_P_BOUND
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5 / np.sqrt(n / 2)
    assert abs(np.corrcoef(z[0::2] ** 2, z[1::2] ** 2)[0, 1]) < 5 / np.sqrt(n / 2)


def test_counter_is_standard_normal_across_keys():
    """The first values of 8,192 perturbations whose keys differ in one field each (iteration, rank, k): N(0, 1)
    by KS, so neighbouring counters give independent values."""
    from scipy import stats

    first = np.array([noise.counter_normal(5, i, r, k, 4) for i in range(32) for r in range(16) for k in range(16)])
    for col in range(4):
        assert stats.kstest(first[:, col].astype(np.float64), "norm").pvalue > KS_P_BOUND


def test_counter_source_writes_into_out_and_holds_nothing():
    from hes_mpi.telemetry import held_bytes

    p = noise.Perturbations("counter", 7, 3010)
    out = np.full(3010, np.nan, np.float32)
    z = p.get(2, 1, 0, out)
    assert z is out
    np.testing.assert_array_equal(out, noise.counter_normal(7, 2, 1, 0, 3010))
    np.testing.assert_array_equal(p.get(2, 1, 0), out)  # without out: a new array
    assert p.table_bytes == 0 and held_bytes(p) == 0
    assert held_bytes(noise.Perturbations("philox", 7, 3010)) == 4 * 3010  # its draw buffer
    assert held_bytes(noise.Perturbations("table", 7, 3010)) == 4 * noise.NoiseTable(3010).size
