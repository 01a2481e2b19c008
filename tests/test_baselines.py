"""The baselines (gradient reuse, local SGD, compressed gradient exchanges) inside an MPI job of any size,
against NumPy references built from every rank's gathered data:

    mpiexec -n 2 python -m pytest --with-mpi -m mpi tests/test_baselines.py

Run serially with ``--with-mpi -m mpi`` they check the 1-rank case (where 1-rank equals BGD exactly).
"""

from __future__ import annotations

import math

import naive
import numpy as np
import pytest
from test_mpi import algorithm_records, all_equal, setup_algo

from hes_mpi.algorithms import BGD, GradientReuse, HybridES, LocalSGD
from hes_mpi.schema import PHASES, StepKind

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def comm():
    from hes_mpi.comm import InstrumentedComm

    return InstrumentedComm()


def gathered(comm, a: np.ndarray) -> np.ndarray:
    """Every rank's copy of ``a``, stacked in rank order (ranks x a.size)."""
    out = np.empty(comm.size * a.size, dtype=a.dtype)
    comm.Allgather(np.ascontiguousarray(a).reshape(-1), out)
    return out.reshape(comm.size, -1)


def shares_of(comm, algo, theta, batch, cfg) -> np.ndarray:
    """Every rank's share of the mean gradient at ``theta`` (its gradient sum / the global batch, float32,
    computed as the exchange computes it), stacked in rank order (ranks x params)."""
    from hes_mpi.algorithms import StepInfo

    X, y = batch.full()
    g = algo.grad.backward(0, theta, X, y, StepInfo()).copy()
    return gathered(comm, g * np.float32(1.0 / cfg.batch))


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32)


# ------------------------------------------------------------------------------------- gradient reuse
@pytest.mark.parametrize("r", [2, 3])
def test_reuse_applies_the_last_gradient_again_sending_nothing(comm, r):
    cfg, _model, algo, theta, batch = setup_algo(comm, GradientReuse, algo="reuse", r=r)
    assert algo.step(0, theta, batch).kind == StepKind.GRAD
    g = algo.g.copy()
    for i in range(1, r):
        before = theta.copy()
        comm.drain()
        info = algo.step(i, theta, batch)
        assert info.kind == StepKind.REUSE
        assert comm.drain().shape[0] == 0  # no call at all
        step = np.float32(cfg.lr * (1.0 if r <= 2 else 0.7))  # --es-step auto
        assert np.array_equal(bits(theta), bits(before - step * g))
    assert algo.step(r, theta, batch).kind == StepKind.GRAD
    assert all_equal(comm, theta)


def test_reuse_is_hes_with_no_search_bitwise(comm):
    """H-ES with --sigma2 0 has K candidates all equal to the unperturbed one: reuse gives its parameters."""
    _, _, reuse, theta_a, batch = setup_algo(comm, GradientReuse, algo="reuse", r=3)
    _, _, hes, theta_b, _ = setup_algo(comm, HybridES, algo="hes", r=3, sigma2=0.0)
    for i in range(7):
        reuse.step(i, theta_a, batch)
        hes.step(i, theta_b, batch)
    assert np.array_equal(bits(theta_a), bits(theta_b))


# ------------------------------------------------------------------------------------------ local SGD
def test_localsgd_steps_on_own_rows_and_averages_every_h(comm):
    cfg, model, algo, theta, batch = setup_algo(comm, LocalSGD, algo="localsgd", r=3)
    start = theta.copy()
    local = start.astype(np.float64)
    X, y = batch.full()
    mask = naive.weight_mask(model.param_count, model.weight_segments)
    for i in range(3):
        comm.drain()
        info = algo.step(i, theta, batch)
        rec = algorithm_records(comm, "grad")
        # the reference: this rank's mean gradient plus L2, a step at --lr, in float64
        _, _, parts = naive.forward_backward(X, y, *model.views(local.astype(np.float32)))
        g = np.concatenate([p.reshape(-1) for p in parts])
        local = local - cfg.lr * (g / max(1, X.shape[0]) + cfg.l2 * local * mask)
        if i < 2:
            assert info.kind == StepKind.LOCAL and rec.shape[0] == 0
            assert np.array_equal(theta, start)  # theta is the last average
            np.testing.assert_allclose(algo.local, local, rtol=2e-4, atol=2e-5)
        else:
            assert info.kind == StepKind.AVERAGE
            assert rec.shape[0] == 1 and rec["bytes_sent"][0] == 4 * model.param_count
            np.testing.assert_allclose(theta, gathered(comm, local).mean(axis=0), rtol=2e-4, atol=2e-5)
    assert all_equal(comm, theta)


def test_localsgd_with_h1_on_one_rank_is_bgd_bitwise(comm):
    """One rank, H = 1: the local rows are the global batch, the average is the rank's own parameters."""
    _, _, local, theta_a, batch = setup_algo(comm, LocalSGD, algo="localsgd", r=1)
    _, _, bgd, theta_b, _ = setup_algo(comm, BGD)
    for i in range(3):
        local.step(i, theta_a, batch)
        bgd.step(i, theta_b, batch)
    if comm.size == 1:
        assert np.array_equal(bits(theta_a), bits(theta_b))
    else:  # every rank's mean of its own rows: near the global mean, not equal to it
        assert all_equal(comm, theta_a)
        np.testing.assert_allclose(theta_a, theta_b, atol=0.05)


def test_localsgd_state_holds_every_ranks_parameters(comm):
    _, model, algo, theta, batch = setup_algo(comm, LocalSGD, algo="localsgd", r=4)
    algo.step(0, theta, batch)
    state = algo.state()  # collective
    if comm.rank == 0:
        assert state["local_all"].shape == (comm.size * model.param_count,)
        full = state["local_all"]
    else:
        full = np.empty(comm.size * model.param_count, np.float32)
    comm.Bcast(full)
    mine = algo.local.copy()
    algo.local[:] = 0.0
    algo.load_state({"has_local": True, "local_all": full})
    assert np.array_equal(algo.local, mine)


# ---------------------------------------------------------------------------------- compressed exchanges
def exchange_step(comm, compress, algo_cls=BGD, **kw):
    """A gradient step with ``--compress``: (cfg, model, algo, theta before, batch, every rank's share of the
    mean (ranks x params, float64), the grad-phase records, the exchanged gradient before L2)."""
    cfg, model, algo, theta, batch = setup_algo(comm, algo_cls, compress=compress, **kw)
    before = theta.copy()
    shares = shares_of(comm, algo, before, batch, cfg)
    comm.drain()
    info = algo.step(0, theta, batch)
    rec = algorithm_records(comm, "grad")
    g = algo.grad.g.astype(np.float64)  # after the exchange: sum of the shares' exchange + L2
    mask = naive.weight_mask(model.param_count, model.weight_segments)
    exchanged = g - cfg.l2 * before.astype(np.float64) * mask
    assert all_equal(comm, theta)
    assert math.isfinite(info.grad_norm)
    return cfg, model, algo, before, batch, shares, rec, exchanged


def test_fp16_exchange_sends_half_the_bytes_and_sums_float16_shares(comm):
    _, model, _, _, _, shares, rec, exchanged = exchange_step(comm, "fp16")
    assert rec.shape[0] == 1 and rec["bytes_sent"][0] == 2 * model.param_count
    want = shares.astype(np.float16).astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(exchanged, want, rtol=4e-3, atol=1e-6 * comm.size)


@pytest.mark.parametrize("fraction", [0.01, 0.2])
def test_topk_sends_k_pairs_keeps_the_rest_as_error_and_sums_every_ranks_pairs(comm, fraction):
    _, model, algo, _, _, shares, rec, exchanged = exchange_step(comm, f"topk:{fraction}")
    k = math.ceil(fraction * model.param_count)
    assert rec.shape[0] == 1 and rec["op"][0] == 1  # one Allgather
    assert rec["bytes_sent"][0] == 8 * k and rec["bytes_recv"][0] == 8 * k * comm.size
    sent = np.zeros(shares.shape, np.float64)
    for r in range(comm.size):
        top = np.argsort(-np.abs(shares[r]), kind="stable")[:k]
        sent[r, top] = shares[r, top]
    np.testing.assert_allclose(exchanged, sent.sum(axis=0), rtol=1e-5, atol=1e-7)
    error = algo.grad.exchange.error
    assert np.array_equal(error + sent[comm.rank], shares[comm.rank])  # nothing is lost: sent + kept = share
    assert np.count_nonzero(error) <= model.param_count - k


def test_topk_error_feedback_adds_the_unsent_rest_to_the_next_step(comm):
    cfg, _model, algo, theta, batch = setup_algo(comm, BGD, compress="topk:0.05")
    algo.step(0, theta, batch)
    error = algo.grad.exchange.error.copy()
    share = shares_of(comm, algo, theta, batch, cfg)[comm.rank]
    algo.step(1, theta, batch)
    ex = algo.grad.exchange
    total = error + share  # what step 1 compressed
    top = np.sort(np.argsort(-np.abs(total), kind="stable")[: ex.k])
    assert np.array_equal(ex.send[: ex.k], top)
    assert np.array_equal(ex.send[ex.k :].view(np.float32), total[top])
    rest = total.copy()
    rest[top] = 0.0
    assert np.array_equal(ex.error, rest)


@pytest.mark.parametrize("rank", [1, 4])
def test_powersgd_matches_the_numpy_algorithm_and_counts_its_three_allreduces(comm, rank):
    # the initial Q, as the exchange draws it (the same on every rank)
    cfg, model, algo, theta, batch = setup_algo(comm, BGD, compress=f"powersgd:{rank}")
    ex = algo.grad.exchange
    Q0 = ex.Q.copy()
    before = theta.copy()
    shares = shares_of(comm, algo, before, batch, cfg).astype(np.float64)
    comm.drain()
    algo.step(0, theta, batch)
    rec = algorithm_records(comm, "grad")
    mask = naive.weight_mask(model.param_count, model.weight_segments)
    exchanged = algo.grad.g.astype(np.float64) - cfg.l2 * before.astype(np.float64) * mask
    # the reference: NumPy float64 PowerSGD of the summed shares
    want = shares.sum(axis=0).copy()
    o = model.offsets
    q = 0
    n_p = n_q = 0
    for j, shape in enumerate(model.shapes):
        if len(shape) != 2 or shape[0] * shape[1] < 2 * (shape[0] + shape[1]) * rank:
            continue
        n, m = shape
        Qj = Q0[q : q + m * rank].reshape(m, rank).astype(np.float64)
        q += m * rank
        Ms = [shares[r, o[j] : o[j + 1]].reshape(n, m) for r in range(comm.size)]
        P = np.linalg.qr(sum(M @ Qj for M in Ms))[0]
        Qn = sum(M.T @ P for M in Ms)
        want[o[j] : o[j + 1]] = (P @ Qn.T).reshape(-1)
        n_p += n * rank
        n_q += m * rank
    np.testing.assert_allclose(exchanged, want, rtol=2e-3, atol=2e-6)
    n_plain = model.param_count - sum(
        s[0] * s[1] for s in model.shapes if len(s) == 2 and s[0] * s[1] >= 2 * (s[0] + s[1]) * rank)
    sizes = sorted(int(b) for b in rec["bytes_sent"])
    assert sizes == sorted(4 * x for x in (n_plain, n_p, n_q) if x)  # biases, P, Q: up to 3 Allreduces
    # error feedback: each rank keeps its share minus its part of the approximation
    np.testing.assert_allclose(ex.error, shares[comm.rank] - exchanged / comm.size, rtol=2e-3, atol=2e-6)


@pytest.mark.parametrize("compress", ["fp16", "topk:0.05", "powersgd:2"])
def test_hes_gradient_steps_use_the_compressed_exchange_and_es_steps_stay_12_bytes(comm, compress):
    _cfg, model, algo, theta, batch = setup_algo(comm, HybridES, algo="hes", r=2, compress=compress)
    comm.drain()
    for i in range(4):
        algo.step(i, theta, batch)
    rec = comm.drain()
    grad = rec[rec["phase"] == PHASES.index("grad")]
    es = rec[rec["phase"] == PHASES.index("es")]
    assert 0 < grad["bytes_sent"].sum() < 2 * 4 * model.param_count  # two gradient steps, compressed
    assert es.shape[0] == 2 and (es["bytes_sent"] <= 12).all()
    assert all_equal(comm, theta)
