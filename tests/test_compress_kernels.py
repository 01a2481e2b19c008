"""The kernels of the compressed exchanges (hes_mpi/compress_kernels.py) against the NumPy code they replaced,
bitwise: NumPy's float32 -> float16 cast (every class of value, a sweep over the bit patterns), top-k's error
feedback and selection (ties included: the lowest indices), its rank-ordered sum, and PowerSGD's error feedback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, mpi_size, mpiexec_cmd

from hes_mpi import compress_kernels as ck


def numpy_half_bits(x: np.ndarray, scale=1.0) -> np.ndarray:
    """The NumPy exchange: the share x * scale (in float32; a signalling NaN comes out quiet), cast to float16."""
    x = x.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        np.multiply(x, np.float32(scale), out=x)
        return x.astype(np.float16).view(np.uint16)


def pack(x: np.ndarray, scale=1.0) -> tuple[np.ndarray, np.ndarray]:
    x = x.copy()
    out = np.empty(x.size, dtype=np.uint16)
    ck.pack_fp16(x, np.float32(scale), out)
    return x, out


def special_float32() -> np.ndarray:
    """Zeros, infinities, NaNs with payloads, the largest half and what rounds past it, half subnormals and
    their halfway points, the smallest float32 subnormals, and exact ties at every half exponent."""
    v = [0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 65535.0, 1e10, 6.1035156e-05, 5.9604645e-08,
         2.9802322e-08, 2.9802326e-08, 8.940697e-08, 1e-45, 3e-39, 1.0, -1.0, 0.5, 1.0009765625, 1.00048828125]
    bits = [0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7F802000, 0x7F801FFF, 0xFFC00001]
    ties = [np.ldexp(1.0 + (2 * j + 1) * 2.0 ** -11, e) for e in range(-24, 16) for j in (0, 1, 511, 1022)]
    arr = np.array(v + ties, dtype=np.float32)
    return np.concatenate([arr, -arr, np.array(bits, dtype=np.uint32).view(np.float32)])


def test_fp16_pack_equals_numpy_on_every_class_of_value():
    x = special_float32()
    _, got = pack(x)
    assert np.array_equal(got, numpy_half_bits(x))


def test_fp16_pack_equals_numpy_on_a_sweep_of_all_bit_patterns():
    # every 61st float32 bit pattern (70 million values), with low mantissa bits of every kind
    patterns = np.arange(0, 1 << 32, 61, dtype=np.uint64).astype(np.uint32)
    x = patterns.view(np.float32)
    _, got = pack(x)
    assert np.array_equal(got, numpy_half_bits(x))


def test_fp16_pack_scales_in_place_as_numpy_does():
    rng = np.random.default_rng(3)
    g = (rng.standard_normal(50_000) * 10.0 ** rng.integers(-9, 3, 50_000)).astype(np.float32)
    scaled, got = pack(g, 1.0 / 1000)
    ref = g.copy()
    np.multiply(ref, np.float32(1.0 / 1000), out=ref)
    assert np.array_equal(scaled.view(np.uint32), ref.view(np.uint32))
    assert np.array_equal(got, numpy_half_bits(g, 1.0 / 1000))


def test_fp16_unpack_equals_numpy_for_all_65536_halves_but_signalling_nans():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(h.size, dtype=np.float32)
    ck.unpack_fp16(h, out)
    ref = h.view(np.float16).astype(np.float32).view(np.uint32)
    signalling = ((h & 0x7C00) == 0x7C00) & ((h & 0x3FF) != 0) & ((h & 0x200) == 0)
    assert np.array_equal(out.view(np.uint32)[~signalling], ref[~signalling])
    # a signalling NaN comes out quiet, its payload kept (the pack never makes one: see the next test)
    assert np.array_equal(out.view(np.uint32)[signalling], ref[signalling] | np.uint32(0x00400000))


def test_fp16_pack_makes_no_signalling_nan():
    x = np.array([0x7F800001, 0xFF800123, 0x7FC00000, 0x7FBFFFFF], dtype=np.uint32).view(np.float32)
    _, got = pack(x)
    assert np.all((got & 0x7C00) == 0x7C00) and np.all(got & 0x200)


def reference_topk(x, scale, e, k):
    """The NumPy exchange's first half, with the documented tie rule (a stable order of decreasing |e|,
    on the bit patterns, so NaNs above infinity)."""
    e = e.copy()
    share = x.copy()
    np.multiply(share, np.float32(scale), out=share)
    e += share
    mag = (e.view(np.uint32) & np.uint32(0x7FFFFFFF)).astype(np.int64)
    idx = np.sort(np.argsort(-mag, kind="stable")[:k]).astype(np.int32)
    val = e[idx].copy()
    e[idx] = 0.0
    return idx, val, e


def kernel_topk(x, scale, e, k):
    e = e.copy()
    x0 = x.copy()
    idx = np.empty(k, dtype=np.int32)
    val = np.empty(k, dtype=np.float32)
    n_out = ck.topk_select(x, np.float32(scale), e, k, idx, val, np.empty(e.size + 1, dtype=np.int32))
    assert n_out == k
    assert np.array_equal(x.view(np.uint32), x0.view(np.uint32))  # x is left as it was
    return idx, val, e


@pytest.mark.parametrize("fraction", [0.01, 0.125, 0.25, 1.0])
def test_topk_select_equals_numpy(fraction):
    rng = np.random.default_rng(11)
    n = 40_000
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.integers(0, n, 5000)] = 0.0  # zero gradients, as the always-blank pixels give
    e = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    k = int(np.ceil(fraction * n))
    for got, want in zip(kernel_topk(x, 1e-3, e, k), reference_topk(x, 1e-3, e, k)):
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_topk_select_takes_the_lowest_indices_among_ties():
    e = np.zeros(1000, dtype=np.float32)
    x = np.zeros(1000, dtype=np.float32)
    x[::7] = 2.0
    x[3::7] = -2.0  # same magnitude, other sign
    x[5] = 3.0
    for k in (1, 10, 200, 286, 287, 500):
        got = kernel_topk(x, 1.0, e, k)
        want = reference_topk(x, 1.0, e, k)
        assert all(np.array_equal(a.view(np.uint32), b.view(np.uint32)) for a, b in zip(got, want)), k
    assert list(kernel_topk(x, 1.0, e, 3)[0]) == [0, 3, 5]


def test_topk_select_ranks_nan_and_infinity_first():
    x = np.array([1.0, np.nan, -np.inf, 5.0, 0.0, np.inf], dtype=np.float32)
    idx, _val, _ = kernel_topk(x, 1.0, np.zeros(6, dtype=np.float32), 3)
    assert list(idx) == [1, 2, 5]


def test_topk_scatter_sums_every_rank_in_rank_order():
    rng = np.random.default_rng(5)
    n, k, ranks = 5000, 700, 3
    recv = np.empty(ranks * 2 * k, dtype=np.int32)
    for r in range(ranks):
        recv[2 * k * r : 2 * k * r + k] = np.sort(rng.choice(n, k, replace=False))
        recv[2 * k * r + k : 2 * k * (r + 1)].view(np.float32)[:] = rng.standard_normal(k).astype(np.float32)
    g = np.full(n, 7.0, dtype=np.float32)
    ck.topk_scatter(recv, recv.view(np.float32), ranks, k, g)
    ref = np.zeros(n, dtype=np.float32)
    for block in recv.reshape(-1, 2, k):
        ref[block[0]] += block[1].view(np.float32)
    assert np.array_equal(g.view(np.uint32), ref.view(np.uint32))


def test_powersgd_error_feedback_kernels_equal_numpy():
    rng = np.random.default_rng(9)
    g = rng.standard_normal(30_001).astype(np.float32)
    e = (rng.standard_normal(30_001) * 1e-3).astype(np.float32)
    got = e.copy()
    ck.accumulate(g, np.float32(1e-3), got)
    share = g.copy()
    np.multiply(share, np.float32(1e-3), out=share)
    want = e + share
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    ck.subtract_scaled(got, g, np.float32(0.5))
    want -= g * np.float32(0.5)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_add_halves_is_the_float32_sum_rounded_to_float16():
    rng = np.random.default_rng(8)
    a = rng.integers(0, 1 << 16, 200_000, dtype=np.uint32).astype(np.uint16)
    b = rng.integers(0, 1 << 16, 200_000, dtype=np.uint32).astype(np.uint16)
    ok = ((a & 0x7C00) != 0x7C00) & ((b & 0x7C00) != 0x7C00)  # finite halves (a NaN's payload is MPI's business)
    a, b = a[ok], b[ok]
    got = b.copy()
    ck.add_halves(a, got)
    with np.errstate(over="ignore"):
        want = (a.view(np.float16).astype(np.float32) + b.view(np.float16).astype(np.float32)).astype(np.float16)
    assert np.array_equal(got, want.view(np.uint16))


WARM_CHECK = """
import json, sys
sys.path.insert(0, sys.argv[1])
from hes_mpi import compress_kernels as ck
from hes_mpi.algorithms import BGD
from hes_mpi.comm import InstrumentedComm
from test_mpi import setup_algo

comm = InstrumentedComm()
names = [n for n in dir(ck) if not n.startswith("_") and hasattr(getattr(ck, n), "signatures")]
ck.warm_up()
before = {n: len(getattr(ck, n).signatures) for n in names}
for method in ("fp16", "topk:0.2", "powersgd:2"):
    cfg, _model, algo, theta, batch = setup_algo(comm, BGD, compress=method)
    algo.step(0, theta, batch)
after = {n: len(getattr(ck, n).signatures) for n in names}
if comm.rank == 0:
    print(json.dumps([before, after]))
"""


def test_warm_up_compiles_what_every_compressed_exchange_calls():
    """In a fresh 2-rank job, after ``warm_up()`` a gradient step of each compressed exchange (fp16 with its
    half_sum Allreduce, top-k, PowerSGD) compiles nothing more: the warm-up's inputs have the exchanges' types
    and layouts, so training's first step does not pay for a compilation (run/setup.warm_kernels)."""
    if MPIEXEC is None or mpi_size() > 1:
        pytest.skip("needs mpiexec, run serially")
    tests = Path(__file__).resolve().parent
    proc = subprocess.run([*mpiexec_cmd(2), sys.executable, "-c", WARM_CHECK, str(tests)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    before, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(before) == 7 and all(before.values()), before
    assert after == before
