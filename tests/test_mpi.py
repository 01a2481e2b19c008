"""Tests that run inside an MPI job, whatever its size:

    mpiexec -n 2 python -m pytest --with-mpi -m mpi tests
    mpiexec -n 4 python -m pytest --with-mpi -m mpi tests

Run serially (``python -m pytest --with-mpi -m mpi``) they check the 1-rank case.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile

import naive
import numpy as np
import pytest
from conftest import UNIFORM_P_BOUND, uniform_p_value

from hes_mpi import kernels, noise
from hes_mpi.algorithms import BGD, HybridES
from hes_mpi.config import PLAIN, RunConfig
from hes_mpi.data import Batch, global_batches, load_shard, local_rows
from hes_mpi.errors import UsageError
from hes_mpi.model import MLP

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def comm():
    from hes_mpi.comm import InstrumentedComm

    return InstrumentedComm()


def setup_algo(comm, cls, **kw):
    cfg = RunConfig(**{"data": "synthetic:800", "hidden": 16, "batch": 200, "lr": 1.0, "K": 4, **kw}).validate()
    shard = load_shard(cfg.data, comm.rank, comm.size)
    model = MLP(shard.n_features, cfg.hidden, shard.n_classes, cfg.activation, cfg.init)
    algo = cls(cfg, model, comm, min(cfg.batch, shard.hi - shard.lo), cfg.batch)
    theta = model.init_params(cfg.seed)
    idx = global_batches(shard.n_train, cfg.batch, cfg.seed, 0)[0]
    rows = local_rows(idx, shard.lo, shard.hi)
    m = rows.shape[0]
    batch = Batch(shard.x_train, shard.y_train, rows, np.empty((m, shard.n_features), np.float32),
                  np.empty(m, np.int32))
    return cfg, model, algo, theta, batch


def all_equal(comm, theta) -> bool:
    return comm.same_everywhere(int(kernels.checksum(theta)))


def algorithm_records(comm, phase):
    from hes_mpi.schema import PHASES

    rec = comm.drain()
    return rec[rec["phase"] == PHASES.index(phase)]


def test_bgd_step_sends_exactly_the_flat_gradient(comm):
    _cfg, model, algo, theta, batch = setup_algo(comm, BGD)
    comm.drain()
    algo.step(0, theta, batch)
    rec = algorithm_records(comm, "grad")
    assert rec.shape[0] == 1  # one Allreduce per gradient step
    assert rec["bytes_sent"][0] == 4 * model.param_count
    assert rec["bytes_recv"][0] == 4 * model.param_count
    assert rec["t_exit"][0] >= rec["t_enter"][0]
    assert all_equal(comm, theta)


@pytest.mark.parametrize("source", ["philox", "table", "counter"])
def test_es_step_exchanges_at_most_32_bytes_and_rebuilds_the_winner(comm, source):
    cfg, model, algo, theta, batch = setup_algo(comm, HybridES, algo="hes", r=2, **{**PLAIN, "noise": source})
    algo.step(0, theta, batch)  # gradient step: g is now the last full gradient
    g = algo.g.copy()
    before = theta.copy()
    comm.drain()
    info = algo.step(1, theta, batch)  # ES step
    rec = algorithm_records(comm, "es")
    assert rec.shape[0] == 1
    assert rec["bytes_sent"].sum() <= 32
    assert rec["bytes_sent"].sum() > 0 or comm.size == 1
    # The update applied is exactly the one rebuilt from the winning key, on every rank.
    assert 0 <= info.es_rank < comm.size and 0 <= info.es_k < cfg.K
    z = noise.Perturbations(cfg.noise, cfg.seed, model.param_count).get(1, info.es_rank, info.es_k)
    expected = before - np.float32(cfg.lr) * (g + np.float32(info.sigma) * z)
    assert np.array_equal(theta.view(np.uint32), expected.view(np.uint32))
    assert all_equal(comm, theta)
    # and the winner really is the cheapest candidate across ranks
    costs, _ = algo.candidate_costs(1, before, batch, info.sigma)
    glob = np.empty(comm.size * cfg.K)
    comm.Allgather(costs, glob)
    assert info.es_rank * cfg.K + info.es_k == int(np.argmin(glob))
    assert info.es_cost == glob.min()


METHODS = [
    {"perturb": "output"},
    {"perturb": "output", "baseline": True},
    {"perturb": "output", "antithetic": True, "noise": "philox"},
    {"perturb": "output", "dist": "rademacher"},
    {"perturb": "all", "baseline": True, "antithetic": True},
    {"perturb": "output", "baseline": True, "recombine": "weighted"},
    {"perturb": "all", "recombine": "weighted", "noise": "philox"},
    {"perturb": "output", "baseline": True, "es_step": 0.5},
    {"perturb": "all", "es_step": 0.5, "es_rows": 0.5},
]


@pytest.mark.parametrize("methods", [{"perturb": "output"}, {"perturb": "all", "baseline": True},
                                     {"perturb": "output", "antithetic": True, "recombine": "weighted"}],
                         ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()))
def test_counter_noise_rebuilds_the_winner_bitwise_everywhere_in_12_bytes(comm, methods):
    """--noise counter: the ES step sends 12 bytes per rank (one MINLOC; 8 K with weighted recombination),
    every rank applies the update rebuilt from the winners' keys alone (noise.counter_normal, no algorithm
    state), bitwise, and any rank rebuilds any other rank's K perturbations bitwise (checksums gathered)."""
    cfg, model, algo, theta, batch = setup_algo(comm, HybridES, algo="hes", r=2, noise="counter", **methods)
    n = algo.zs.shape[1]
    algo.step(0, theta, batch)
    g = algo.g.copy()
    before = theta.copy()
    comm.drain()
    info = algo.step(1, theta, batch)
    rec = algorithm_records(comm, "es")
    assert rec.shape[0] == 1
    assert rec["bytes_sent"].sum() == (8 * cfg.K if cfg.recombine == "weighted" else 12)
    assert all_equal(comm, theta)
    costs, base = algo.candidate_costs(1, before, batch, info.sigma)
    glob = np.empty(comm.size * cfg.K)
    comm.Allgather(np.ascontiguousarray(costs - base if cfg.baseline else costs), glob)
    order = np.argsort(glob, kind="stable")
    assert info.es_rank * cfg.K + info.es_k == order[0]

    def key_z(index):  # candidate (rank, k) from its key; antithetic pairs share draw k // 2, the odd one negated
        rank, k = divmod(int(index), cfg.K)
        z = noise.counter_normal(cfg.seed, 1, rank, k // 2 if cfg.antithetic else k, n)
        return -z if cfg.antithetic and k % 2 else z

    if cfg.recombine == "best":
        z = key_z(order[0])
    else:
        mu = glob.size // 2 or 1
        w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
        w /= w.sum()
        z = np.zeros(n, np.float32)
        for j in range(mu):
            z += np.float32(w[j]) * key_z(order[j])
    expected = expected_update(algo, cfg, model, before, g, info.sigma, z)
    assert np.array_equal(theta.view(np.uint32), expected.view(np.uint32))
    # This rank's perturbations as its ES step drew them, against every rank's rebuild of them from the keys.
    mine = np.array([kernels.checksum(algo.perturbation(1, comm.rank, k, np.empty(n, np.float32)))
                     for k in range(cfg.K)], dtype=np.int64)
    drawn = np.empty(comm.size * cfg.K, np.int64)
    comm.Allgather(mine, drawn)
    rebuilt = np.array([kernels.checksum(key_z(index)) for index in range(comm.size * cfg.K)], dtype=np.int64)
    assert np.array_equal(drawn, rebuilt)


def expected_update(algo, cfg, model, before, g, sigma, z):
    """theta after an ES step whose applied perturbation is z, built with plain NumPy float32."""
    f32 = np.float32
    if cfg.perturb == "output":
        out = before - f32(cfg.lr * cfg.effective_es_step) * g
        o = model.offsets
        out[o[2]:o[4]] = out[o[2]:o[4]] - f32(cfg.lr * sigma) * z
        return out
    F = cfg.effective_es_step
    return before - f32(cfg.lr * F) * (g + f32(sigma / F) * z)


@pytest.mark.parametrize("methods", METHODS, ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()))
def test_es_methods_exchange_little_and_rebuild_the_same_update_everywhere(comm, methods):
    cfg, model, algo, theta, batch = setup_algo(comm, HybridES, algo="hes", r=2, **methods)
    algo.step(0, theta, batch)
    g = algo.g.copy()
    before = theta.copy()
    comm.drain()
    info = algo.step(1, theta, batch)
    rec = algorithm_records(comm, "es")
    assert rec.shape[0] == 1
    limit = 8 * cfg.K if cfg.recombine == "weighted" else 12
    assert 0 < rec["bytes_sent"].sum() <= limit or comm.size == 1
    assert all_equal(comm, theta)
    # Every rank's costs, gathered: the winner(s) are the cheapest candidates across ranks.
    costs, base = algo.candidate_costs(1, before, batch, info.sigma)
    values = costs - base if cfg.baseline else costs
    glob = np.empty(comm.size * cfg.K)
    comm.Allgather(np.ascontiguousarray(values), glob)
    order = np.argsort(glob, kind="stable")
    assert info.es_rank * cfg.K + info.es_k == order[0]
    assert info.es_cost == glob.min()
    # The update is the one rebuilt from the winners' keys, bitwise.
    if cfg.recombine == "best":
        z = algo.perturbation(1, info.es_rank, info.es_k, np.empty(algo.zsum.shape, np.float32)).copy()
    else:
        mu = glob.size // 2 or 1
        w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
        w /= w.sum()
        z = np.zeros(algo.zsum.shape, np.float32)
        for j in range(mu):
            z += np.float32(w[j]) * algo.perturbation(1, *divmod(int(order[j]), cfg.K),
                                                      np.empty(z.shape, np.float32))
    expected = expected_update(algo, cfg, model, before, g, info.sigma, z)
    assert np.array_equal(theta.view(np.uint32), expected.view(np.uint32))


def test_es_rows_costs_a_uniform_sample_of_the_rows_drawn_per_iteration_and_rank(comm, monkeypatch):
    """--es-rows 0.3: the rows the ES step costs its candidates on are a uniform sample of the rank's rows of the
    batch (chi-square over 300 ES iterations, p > 0.001), another at every iteration and on every rank, and the
    same when the iteration is costed again. (The first rows, what --es-rows took before, fail at once.)"""
    cfg, _model, algo, theta, batch = setup_algo(comm, HybridES, algo="hes", r=2, perturb="output", es_rows=0.3)
    algo.step(0, theta, batch)
    seen = []
    chunks = Batch.chunks

    def recording(self, size):
        seen.append(self.rows.copy())
        return chunks(self, size)

    monkeypatch.setattr(Batch, "chunks", recording)
    sigma, T, n = algo.sigma(), 300, batch.n
    m = math.ceil(cfg.es_rows * n)
    counts = np.zeros(n)
    for i in range(1, T + 1):
        algo.candidate_costs(i, theta, batch, sigma)
        assert seen[-1].size == m and np.isin(seen[-1], batch.rows).all()
        counts[np.searchsorted(batch.rows, seen[-1])] += 1
    assert uniform_p_value(counts, m, T) > UNIFORM_P_BOUND
    assert len({seen[i].tobytes() for i in range(T)}) == T  # a new draw every iteration
    costs, _ = algo.candidate_costs(7, theta, batch, sigma)
    np.testing.assert_array_equal(seen[-1], seen[6])
    assert np.array_equal(costs, algo.candidate_costs(7, theta, batch, sigma)[0])
    # each rank draws its own positions in its rows of the batch (a digest of them, gathered)
    digest = hashlib.sha256(np.searchsorted(batch.rows, seen[-1]).astype(np.int64).tobytes()).digest()
    gathered = comm.Allgather(np.frombuffer(digest[:8], dtype=np.int64).copy(), np.empty(comm.size, np.int64))
    assert len(set(gathered.tolist())) == comm.size


def dense_candidate_costs(cfg, model, algo, theta, batch, sigma, rank):
    """The K candidates of ``algo``'s ES step at iteration 1 (then the unperturbed one) built as dense
    parameter vectors and costed by the float64 reference (mean loss + L2)."""
    X, y = batch.full()
    o = model.offsets
    perturb = cfg.perturb
    want = []
    for k in range(cfg.K + 1):
        if perturb == "all":
            z = algo.perturbation(1, rank, k % cfg.K, np.empty(algo.zs.shape[1], np.float32))
            cand = theta - np.float32(cfg.lr) * (algo.g + np.float32(sigma if k < cfg.K else 0.0) * z)
        else:
            cand = (theta - np.float32(cfg.lr) * algo.g).astype(np.float64)
        if k < cfg.K and perturb == "output":
            z = algo.perturbation(1, rank, k, np.empty(algo.zs.shape[1], np.float32))
            cand[o[-3]:o[-1]] -= cfg.lr * sigma * z
        elif k < cfg.K and perturb.startswith("lowrank"):
            z = algo.perturbation(1, rank, k, np.empty(algo.zs.shape[1], np.float32))
            views = model.views(cand)
            for l, (E, c) in enumerate(lowrank_dense(model, z, algo.R)):
                views[2 * l][:] -= cfg.lr * algo.sigmas()[l] * E
                views[2 * l + 1][:] -= cfg.lr * algo.sigmas()[l] * c
        loss, _ = naive.deep_forward_loss(X, y, *model.layer_views(cand), cfg.activation)
        want.append(loss / X.shape[0] + model.l2_term(cand, cfg.l2))
    return want


@pytest.mark.parametrize("baseline", [False, True])
def test_head_only_perturbation_costs_match_whole_vector_candidates(comm, baseline):
    """--perturb output's shared-hidden-layer costs equal those of the explicit candidate vectors
    (with --baseline, relative to the unperturbed one: the shared ||W1||^2 term is left out then)."""
    cfg, model, algo, theta, batch = setup_algo(comm, HybridES, algo="hes", r=2, perturb="output",
                                                baseline=baseline)
    algo.step(0, theta, batch)
    sigma = algo.sigma()
    costs, base = algo.candidate_costs(1, theta, batch, sigma)
    want = dense_candidate_costs(cfg, model, algo, theta, batch, sigma, comm.rank)
    if baseline:
        np.testing.assert_allclose(costs - base, np.array(want[:-1]) - want[-1], rtol=1e-3, atol=2e-6)
    else:
        np.testing.assert_allclose(np.append(costs, base), want, rtol=2e-5)


def test_carry_moves_the_stored_direction_by_the_chosen_perturbation(comm):
    _cfg, _model, algo, theta, batch = setup_algo(comm, HybridES, algo="hes", r=3, perturb="output", carry=True)
    algo.step(0, theta, batch)
    g = algo.g.copy()
    info = algo.step(1, theta, batch)
    z = algo.perturbation(1, info.es_rank, info.es_k, np.empty(algo.zsum.shape, np.float32))
    expected = g.copy()
    expected[algo.seg] = g[algo.seg] + np.float32(info.sigma) * z
    assert np.array_equal(algo.g, expected)
    assert all_equal(comm, algo.g)


def test_adapt_sigma_grows_on_success_and_shrinks_on_failure(comm):
    _cfg, _model, algo, theta, batch = setup_algo(comm, HybridES, algo="hes", r=5, perturb="output", baseline=True,
                                                 adapt_sigma=True)
    algo.step(0, theta, batch)
    for i in range(1, 5):
        before = algo.sigma_mult
        info = algo.step(i, theta, batch)
        factor = algo.sigma_mult / before
        assert np.isclose(factor, np.exp(0.05) if info.es_cost < 0 else np.exp(-0.2))
        assert comm.same_everywhere(int(np.float64(algo.sigma_mult).view(np.int64)))


def test_assisted_does_both_every_iteration(comm):
    _cfg, _model, algo, theta, batch = setup_algo(comm, HybridES, algo="hes", assisted=True)
    comm.drain()
    for i in range(3):
        info = algo.step(i, theta, batch)
        assert info.kind == 2
    rec = comm.drain()
    from hes_mpi.schema import PHASES

    assert np.count_nonzero(rec["phase"] == PHASES.index("grad")) == 3
    assert np.count_nonzero(rec["phase"] == PHASES.index("es")) == 3
    assert all_equal(comm, theta)


def test_minloc_picks_lowest_index_on_ties(comm):
    value, index = comm.minloc(1.5, comm.rank)
    assert value == 1.5 and index == 0
    value, index = comm.minloc(float(comm.size - comm.rank), comm.rank)
    assert value == 1.0 and index == comm.size - 1


def test_agree_reports_lowest_failing_rank(comm):
    from hes_mpi.comm import SilentExit

    failing = comm.size - 1

    def maybe_fail():
        if comm.rank == failing:
            raise UsageError("boom")
        return 7

    if comm.rank == failing:
        with pytest.raises(UsageError):
            comm.agree(maybe_fail)
    else:
        with pytest.raises(SilentExit) as e:
            comm.agree(maybe_fail)
        assert e.value.exit_code == 2
    assert comm.agree(lambda: 7) == 7


def test_training_keeps_ranks_identical_and_logs(comm):
    import h5py

    from hes_mpi.run.trainer import Trainer

    path = os.path.join(tempfile.gettempdir(), f"hes_mpi_test_{os.getppid()}.h5")
    buf = np.frombuffer(path.encode().ljust(512, b"\0"), dtype=np.uint8).copy()
    comm.Bcast(buf)
    path = bytes(buf).rstrip(b"\0").decode()
    cfg = RunConfig(algo="hes", data="synthetic:800", hidden=16, batch=200, lr=1.0, K=3, r=3, epochs=2,
                    out=path, force=True, check_every=1).validate()
    t = Trainer(cfg, comm)
    s = t.run()
    assert s["iterations"] == 8
    assert all_equal(comm, t.theta)
    comm.Barrier()
    if comm.rank == 0:
        with h5py.File(path, "r") as f:
            assert f.attrs["complete"]
            assert f["iterations/step_s"].shape == (8, comm.size)
            assert np.array_equal(f["final/theta"][()], t.theta)
            assert int(f["environment"].attrs["ranks"]) == comm.size
        os.remove(path)


def test_fallback_keeps_the_unperturbed_candidate_when_none_beats_it(comm):
    """--fallback: an ES step whose best candidate does not beat the unperturbed one (value >= 0) applies
    theta - lr g exactly (a reuse step); one that does applies the winner as without --fallback."""
    from hes_mpi.algorithms import GradientReuse

    for sigma2 in (0.0, 0.5):  # sigma2 0: every candidate ties with the unperturbed one (value 0)
        _cfg, _model, algo, theta, batch = setup_algo(comm, HybridES, algo="hes", r=2, perturb="output",
                                                     baseline=True, fallback=True, sigma2=sigma2)
        _, _, plain, theta_b, _ = setup_algo(comm, HybridES, algo="hes", r=2, perturb="output", baseline=True,
                                             sigma2=sigma2)
        _, _, reuse, theta_c, _ = setup_algo(comm, GradientReuse, algo="reuse", r=2)
        for i in range(2):
            info = algo.step(i, theta, batch)
            plain.step(i, theta_b, batch)
            reuse.step(i, theta_c, batch)
        if info.es_cost >= 0:
            assert (info.es_rank, info.es_k) == (-1, -1)
            assert np.array_equal(theta, theta_c)
        else:
            assert info.es_k >= 0 and np.array_equal(theta, theta_b)
        assert all_equal(comm, theta)


# ---------------------------------------------------------------------------- deeper networks
def setup_deep(comm, **kw):
    return setup_algo(comm, HybridES, hidden="16,8", activation="relu", init="he", lr=0.5, algo="hes", r=2, **kw)


def lowrank_dense(model, z, R):
    """The dense perturbation of every layer of a low-rank noise vector z: [(A Bt / sqrt(R), c), ...]."""
    out, off = [], 0
    for a, b in model.layer_dims:
        A = z[off : off + a * R].reshape(a, R).astype(np.float64)
        off += a * R
        Bt = z[off : off + R * b].reshape(R, b).astype(np.float64)
        off += R * b
        out.append((A @ Bt / np.sqrt(R), z[off : off + b].astype(np.float64)))
        off += b
    return out


@pytest.mark.parametrize("methods", [{"perturb": "lowrank:1"}, {"perturb": "lowrank:3", "antithetic": True},
                                     {"perturb": "lowrank:2", "recombine": "weighted", "noise": "philox"},
                                     {"perturb": "lowrank:2", "noise": "counter"},
                                     {"perturb": "lowrank:1", "carry": True}],
                         ids=lambda m: ",".join(f"{k}={v}" for k, v in m.items()))
def test_lowrank_es_step_rebuilds_the_same_update_everywhere(comm, methods):
    """--perturb lowrank:R on a deeper network: at most 12 bytes per rank (8 K with weighted recombination),
    the winner is the cheapest candidate of all ranks, and every rank applies exactly the float32 update
    rebuilt from the winners' keys: the base step, then per layer W - c A Bt (rank-1 terms in order) and
    b - c' c."""
    cfg, model, algo, theta, batch = setup_deep(comm, **methods)
    algo.step(0, theta, batch)
    g0 = algo.g.copy()
    before = theta.copy()
    sigmas = algo.sigmas()
    assert np.all(sigmas > 0) and np.unique(sigmas).size == model.n_layers  # one sigma per layer
    costs, base = algo.candidate_costs(1, before, batch, algo.sigma())  # before --carry moves g
    comm.drain()
    info = algo.step(1, theta, batch)
    rec = algorithm_records(comm, "es")
    limit = 8 * cfg.K if cfg.recombine == "weighted" else 12
    assert rec.shape[0] == 1 and (0 < rec["bytes_sent"].sum() <= limit or comm.size == 1)
    assert all_equal(comm, theta)
    glob = np.empty(comm.size * cfg.K)
    comm.Allgather(np.ascontiguousarray(costs - base), glob)
    order = np.argsort(glob, kind="stable")
    assert info.es_rank * cfg.K + info.es_k == order[0]
    if cfg.recombine == "best":
        winners = [(int(order[0]), 1.0)]
    else:
        mu = glob.size // 2 or 1
        w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
        winners = [(int(order[j]), float(w[j] / w.sum())) for j in range(mu)]
    f32 = np.float32
    expected = before - f32(cfg.lr * cfg.effective_es_step) * g0
    g_expected = g0.copy()
    R = algo.R
    for index, wt in winners:
        z = algo.perturbation(1, *divmod(index, cfg.K), np.empty(algo.zs.shape[1], np.float32)).copy()
        for target, step in ((expected, wt * cfg.lr * sigmas), (g_expected, -wt * sigmas)):
            if target is g_expected and not cfg.carry:
                continue
            views, off = model.views(target), 0
            for l, (a, b) in enumerate(model.layer_dims):
                A = z[off : off + a * R].reshape(a, R)
                off += a * R
                Bt = z[off : off + R * b].reshape(R, b)
                off += R * b
                W = views[2 * l]
                for r in range(R):
                    W[:] = W - (f32(float(step[l]) / np.sqrt(R)) * A[:, r : r + 1]) * Bt[r]
                views[2 * l + 1][:] = views[2 * l + 1] - f32(float(step[l])) * z[off : off + b]
                off += b
    assert np.array_equal(theta.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(algo.g.view(np.uint32), g_expected.view(np.uint32))


@pytest.mark.parametrize("perturb", ["lowrank:1", "lowrank:2", "output", "all"])
def test_deep_candidate_costs_match_dense_candidates(comm, perturb):
    """Every perturbation mode's costs on a 2-hidden-layer ReLU network against the candidates built as
    dense parameter vectors and costed by the float64 reference (loss + L2)."""
    cfg, model, algo, theta, batch = setup_deep(comm, perturb=perturb, baseline=False)
    algo.step(0, theta, batch)
    sigma = algo.sigma()
    costs, base = algo.candidate_costs(1, theta, batch, sigma)
    want = dense_candidate_costs(cfg, model, algo, theta, batch, sigma, comm.rank)
    got = np.append(costs, base) if perturb != "all" else np.append(costs, want[-1])
    np.testing.assert_allclose(got, want, rtol=2e-5)
