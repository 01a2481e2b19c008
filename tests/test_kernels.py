"""Every Numba kernel against its plain NumPy reference in tests/naive.py."""

from __future__ import annotations

import naive
import numpy as np
import pytest

from hes_mpi import kernels
from hes_mpi.model import MLP

# (rows, n_in, hidden, classes)
SHAPES = [
    (1, 20, 1, 10),
    (1, 784, 300, 10),
    (13, 20, 7, 10),
    (64, 784, 300, 10),
    (100, 32, 7, 10),
    (9, 5, 1, 3),
]
SHAPE_IDS = [f"rows{r}-in{i}-hid{h}-out{c}" for r, i, h, c in SHAPES]

GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5
LOSS_RTOL = 1e-5


def make_problem(rows, n_in, hidden, classes, seed=0, wscale=None):
    """Random float32 inputs in [0, 1), int32 labels, and a flat float32 theta with its views."""
    rng = np.random.default_rng([seed, rows, n_in, hidden, classes])
    net = MLP(n_in, hidden, classes)
    theta = rng.standard_normal(net.param_count, dtype=np.float32)
    if wscale is None:
        wscale = 1.0 / np.sqrt(n_in)  # keep the sigmoid out of saturation so gradients are not all ~0
    W1, b1, _, _ = net.views(theta)
    W1 *= np.float32(wscale)
    b1 *= np.float32(0.5)
    X = rng.random((rows, n_in), dtype=np.float32)
    y = rng.integers(0, classes, rows).astype(np.int32)
    return net, theta, X, y


def layers(views):
    """(W1, b1, W2, b2, ...) as the kernels take it: ((W1, W2, ...), (b1, b2, ...))."""
    return tuple(views[0::2]), tuple(views[1::2])


def grad_views(net):
    g = np.full(net.param_count, np.nan, dtype=np.float32)  # poison: every entry must be written
    return g, net.views(g)


def central_differences(loss, t64, eps=1e-6):
    """d loss / d t by central differences, component by component (float64)."""
    fd = np.empty_like(t64)
    for i in range(t64.size):
        tp, tm = t64.copy(), t64.copy()
        tp[i] += eps
        tm[i] -= eps
        fd[i] = (loss(tp) - loss(tm)) / (2 * eps)
    return fd


def assert_bitwise(a, b):
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    assert a.dtype == b.dtype == np.float32
    assert a.shape == b.shape
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), (
        f"{np.count_nonzero(a.view(np.uint32) != b.view(np.uint32))} elements differ bitwise"
    )


# ------------------------------------------------------------------------------ forward_loss
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_loss(shape):
    rows, _, hidden, classes = shape
    net, theta, X, y = make_problem(*shape)
    views = net.views(theta)
    ws = kernels.Workspace(hidden, classes, rows)
    loss, correct = kernels.forward_loss(X, y, *layers(views), ws.Hs, ws.Z, 0)
    ref_loss, ref_correct = naive.forward_loss(X, y, *views)
    assert isinstance(correct, (int, np.integer))
    assert int(correct) == ref_correct
    assert np.isfinite(loss) and loss >= 0.0
    np.testing.assert_allclose(loss, ref_loss, rtol=LOSS_RTOL, atol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_loss_workspace_larger_than_batch(shape):
    """Buffers with more rows than X must give the same result as exactly sized ones."""
    rows, _, hidden, classes = shape
    net, theta, X, y = make_problem(*shape)
    views = net.views(theta)
    exact = kernels.Workspace(hidden, classes, rows)
    big = kernels.Workspace(hidden, classes, rows + 17)
    big.Hs[0].fill(np.nan)
    big.Z.fill(np.nan)
    a = kernels.forward_loss(X, y, *layers(views), exact.Hs, exact.Z, 0)
    b = kernels.forward_loss(X, y, *layers(views), big.Hs, big.Z, 0)
    assert a[1] == b[1]
    assert a[0] == pytest.approx(b[0], rel=1e-6, abs=0)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("K", [1, 5])
def test_head_losses(shape, K):
    """Shared hidden layer, K perturbed output layers (+ the unperturbed one), accumulated over chunks."""
    rows, _, hidden, classes = shape
    net, theta, X, y = make_problem(*shape)
    W1, b1, W2, b2 = net.views(theta)
    rng = np.random.default_rng(K)
    zs = rng.standard_normal((K, W2.size + b2.size), dtype=np.float32)
    ws = kernels.Workspace(hidden, classes, rows)
    Zcat, zb = kernels.head_perturbations(zs, hidden, classes)
    losses = np.zeros(K + 1)
    half = max(1, rows // 2)
    Zp = np.full((rows, K * classes), np.nan, np.float32)
    for a, b in ((0, half), (half, rows)):
        kernels.head_losses(X[a:b], y[a:b], (W1, W2), (b1, b2), Zcat, zb, 0.3, ws.Hs, ws.Z, Zp, losses, 0)
    ref = naive.head_losses(X, y, W1, b1, W2, b2, zs, 0.3)
    np.testing.assert_allclose(losses, ref, rtol=LOSS_RTOL, atol=0)
    assert losses[K] == pytest.approx(kernels.forward_loss(X, y, (W1, W2), (b1, b2), ws.Hs, ws.Z, 0)[0], rel=1e-6)


def test_hidden_sigmoid_within_float32_rounding_everywhere():
    """The vectorised sigmoid (range reduction + polynomial exp) against float64, over the whole range,
    including saturation (|x| > 87, where the exponent is clamped) and exact zero."""
    b1 = np.concatenate([np.linspace(-120, 120, 4001), [-1e30, -88.0, -87.0, 0.0, 87.0, 88.0, 1e30]])
    b1 = b1.astype(np.float32)
    X = np.zeros((2, 3), np.float32)
    W1 = np.ones((3, b1.size), np.float32)
    H = np.empty((2, b1.size), np.float32)
    np.dot(X, W1, H)
    kernels._sigmoid_inplace(H, b1)
    with np.errstate(over="ignore"):  # exp(1e30) in the reference is inf: sigmoid 0, as wanted
        ref = naive.sigmoid(b1.astype(np.float64))
    assert np.array_equal(H[0], H[1])
    np.testing.assert_allclose(H[0], ref, rtol=3e-7, atol=1e-37)
    assert H[0][b1 == 0.0][0] == 0.5
    # saturated units are exactly 0 or 1, never denormal (denormals slow the later products 10-100x)
    tiny = np.finfo(np.float32).tiny
    assert not np.any((H != 0) & (np.abs(H) < tiny))
    assert np.all(H[0][b1 < -87.5] == 0.0) and np.all(H[0][b1 > 87.5] == 1.0)


def test_vectorised_exp_within_float32_rounding():
    x = np.concatenate([np.linspace(-87, 88, 10001), [-1e30, -100.0, 0.0, 1e-8]]).astype(np.float32)
    got = x.copy()
    kernels._exp_inplace(got, np.empty(x.size, np.int32))
    ref = np.exp(np.clip(x.astype(np.float64), -87, 88))
    np.testing.assert_allclose(got, ref, rtol=3e-7, atol=0)
    assert got[x == 0.0][0] == 1.0


def test_head_perturbations_layout():
    rng = np.random.default_rng(3)
    hidden, classes, K = 4, 3, 2
    zs = rng.standard_normal((K, hidden * classes + classes), dtype=np.float32)
    Zcat, zb = kernels.head_perturbations(zs, hidden, classes)
    for k in range(K):
        np.testing.assert_array_equal(Zcat[:, k * classes:(k + 1) * classes],
                                      zs[k, :hidden * classes].reshape(hidden, classes))
        np.testing.assert_array_equal(zb[k], zs[k, hidden * classes:])


@pytest.mark.parametrize("n", [1, 7, 238510])
def test_sum_squares(n):
    v = np.random.default_rng(n).standard_normal(n, dtype=np.float32)
    assert kernels.sum_squares(v) == pytest.approx(naive.sum_squares(v), rel=1e-12)


@pytest.mark.parametrize("which", ["forward_loss", "forward_backward", "evaluate"])
def test_loss_value_matches_reference(which):
    """The summed cross-entropy of every loss-returning kernel against the float64 reference.

    Regression test: _softmax_ce writes the probabilities into P, which aliases Z; the target logit must
    be read before that (the original code read Z[i, y[i]] afterwards and got p_y instead of z_y).
    """
    for shape in SHAPES:
        rows, _, hidden, classes = shape
        net, theta, X, y = make_problem(*shape)
        views = net.views(theta)
        ws = kernels.Workspace(hidden, classes, rows)
        if which == "forward_loss":
            loss, _ = kernels.forward_loss(X, y, *layers(views), ws.Hs, ws.Z, 0)
        elif which == "forward_backward":
            _, gv = grad_views(net)
            loss, _ = kernels.forward_backward(X, y, *layers(views), *layers(gv), ws.Hs, ws.Z, ws.Ds, 0)
        else:
            loss, _ = kernels.evaluate(X, y, layers(views), 0, kernels.Workspace(hidden, classes, 3))
        ref, _ = naive.forward_loss(X, y, *views)
        np.testing.assert_allclose(loss, ref, rtol=LOSS_RTOL, atol=0, err_msg=f"{which} {shape}")


def test_naive_loss_is_cross_entropy():
    """Sanity check of the reference itself: uniform logits give log(classes) per row."""
    net = MLP(4, 3, 10)
    theta = np.zeros(net.param_count, np.float32)
    X = np.ones((6, 4), np.float32)
    y = np.arange(6, dtype=np.int32)
    loss, _ = naive.forward_loss(X, y, *net.views(theta))
    assert loss == pytest.approx(6 * np.log(10.0), rel=1e-12)


# ------------------------------------------------------------------------------ forward_backward
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_backward_gradient(shape):
    rows, _, hidden, classes = shape
    net, theta, X, y = make_problem(*shape)
    views = net.views(theta)
    g, gv = grad_views(net)
    ws = kernels.Workspace(hidden, classes, rows)
    loss, correct = kernels.forward_backward(X, y, *layers(views), *layers(gv), ws.Hs, ws.Z, ws.Ds, 0)
    ref_loss, ref_correct, ref_grads = naive.forward_backward(X, y, *views)
    assert int(correct) == ref_correct
    np.testing.assert_allclose(loss, ref_loss, rtol=LOSS_RTOL, atol=0)
    assert np.isfinite(g).all()
    for name, got, want in zip(("gW1", "gb1", "gW2", "gb2"), gv, ref_grads):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=name)
    # the loss it returns is the one forward_loss returns for the same inputs
    ws2 = kernels.Workspace(hidden, classes, rows)
    fl, fc = kernels.forward_loss(X, y, *layers(views), ws2.Hs, ws2.Z, 0)
    assert fc == correct
    assert loss == pytest.approx(fl, rel=1e-12, abs=0)


def test_forward_backward_overwrites_gradient_buffers():
    """The gradient is written, not accumulated: stale values in the buffers do not leak through."""
    shape = (13, 20, 7, 10)
    net, theta, X, y = make_problem(*shape)
    views = net.views(theta)
    ws = kernels.Workspace(7, 10, 13)
    g1 = np.zeros(net.param_count, np.float32)
    g2 = np.full(net.param_count, 123.0, np.float32)
    kernels.forward_backward(X, y, *layers(views), *net.layer_views(g1), ws.Hs, ws.Z, ws.Ds, 0)
    kernels.forward_backward(X, y, *layers(views), *net.layer_views(g2), ws.Hs, ws.Z, ws.Ds, 0)
    assert_bitwise(g1, g2)


def test_forward_backward_finite_differences():
    """Kernel gradient vs central differences of the float64 reference loss on a tiny network."""
    rows, n_in, hidden, classes = 5, 3, 4, 3
    net, theta, X, y = make_problem(rows, n_in, hidden, classes, seed=3, wscale=0.7)
    g, gv = grad_views(net)
    ws = kernels.Workspace(hidden, classes, rows)
    kernels.forward_backward(X, y, *net.layer_views(theta), *layers(gv), ws.Hs, ws.Z, ws.Ds, 0)

    t64 = theta.astype(np.float64)
    X64 = X.astype(np.float64)
    fd = central_differences(lambda t: naive.forward_loss(X64, y, *net.views(t))[0], t64)

    # the reference gradient is right ...
    _, _, ref = naive.forward_backward(X64, y, *net.views(t64))
    np.testing.assert_allclose(np.concatenate([r.ravel() for r in ref]), fd, rtol=1e-6, atol=1e-8)
    # ... and so is the kernel's, to float32 accuracy
    np.testing.assert_allclose(g, fd, rtol=GRAD_RTOL, atol=GRAD_ATOL)


# ------------------------------------------------------------------------------ finish_gradient
@pytest.mark.parametrize("dims", [(20, 1, 10), (20, 7, 10), (784, 300, 10)])
def test_finish_gradient(dims):
    net = MLP(*dims)
    rng = np.random.default_rng(1)
    g0 = rng.standard_normal(net.param_count, dtype=np.float32) * np.float32(50)
    theta = rng.standard_normal(net.param_count, dtype=np.float32)
    inv_batch, l2 = 1.0 / 1000.0, 1e-4
    g = g0.copy()
    kernels.finish_gradient(g, theta, inv_batch, l2, net.weight_segments)
    ref = naive.finish_gradient(g0, theta, inv_batch, l2, net.weight_segments)
    np.testing.assert_allclose(g, ref, rtol=1e-6, atol=1e-9)
    # biases get no L2 term: exactly g * inv_batch there
    mask = naive.weight_mask(net.param_count, net.weight_segments)
    assert_bitwise(g[~mask], g0[~mask] * np.float32(inv_batch))
    # element-wise float32 arithmetic, reproducible bitwise
    assert_bitwise(g[mask], g0[mask] * np.float32(inv_batch) + np.float32(l2) * theta[mask])


def test_finish_gradient_zero_l2_is_pure_scaling():
    net = MLP(5, 3, 2)
    rng = np.random.default_rng(2)
    g0 = rng.standard_normal(net.param_count, dtype=np.float32)
    g = g0.copy()
    kernels.finish_gradient(g, rng.standard_normal(net.param_count, dtype=np.float32), 0.25, 0.0,
                            net.weight_segments)
    assert_bitwise(g, g0 * np.float32(0.25))


# ------------------------------------------------------------------------------ sgd_update
@pytest.mark.parametrize("n", [1, 7, 1000, 238510])
@pytest.mark.parametrize("lr", [5.0, 0.1, 1.0 / 3.0, 1e-7])
def test_sgd_update_bitwise(n, lr):
    rng = np.random.default_rng([n, 7])
    theta0 = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(3)
    theta = theta0.copy()
    kernels.sgd_update(theta, g, lr)
    assert_bitwise(theta, naive.sgd_update_f32(theta0, g, lr))
    assert_bitwise(theta, theta0 - np.float32(lr) * g)
    np.testing.assert_allclose(theta, naive.sgd_update(theta0, g, lr), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ make_candidate
@pytest.mark.parametrize("dims", [(20, 1, 10), (20, 7, 10), (784, 300, 10)])
@pytest.mark.parametrize("lr,sigma", [(5.0, 0.7071067811865476), (0.1, 0.0), (1.0 / 3.0, 2.5e-3), (1e-3, 10.0)])
def test_make_candidate_bitwise(dims, lr, sigma):
    net = MLP(*dims)
    rng = np.random.default_rng([*dims, 11])
    n = net.param_count
    theta = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(0.01)
    z = rng.standard_normal(n, dtype=np.float32)
    theta_before = theta.copy()
    out = np.full(n, np.nan, np.float32)
    sq = kernels.make_candidate(theta, g, z, lr, sigma, out, net.weight_segments)

    assert_bitwise(theta, theta_before)  # theta untouched
    want = theta - np.float32(lr) * (g + np.float32(sigma) * z)
    assert_bitwise(out, want)
    ref_out, ref_sq = naive.make_candidate_f32(theta, g, z, lr, sigma, net.weight_segments)
    assert_bitwise(out, ref_out)
    assert sq == pytest.approx(ref_sq, rel=1e-12)
    # and close to the exact float64 result
    exact, exact_sq = naive.make_candidate(theta, g, z, lr, sigma, net.weight_segments)
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-5)
    assert sq == pytest.approx(exact_sq, rel=1e-5)


def test_make_candidate_sigma_zero_equals_sgd_update():
    net = MLP(20, 7, 10)
    rng = np.random.default_rng(5)
    theta = rng.standard_normal(net.param_count, dtype=np.float32)
    g = rng.standard_normal(net.param_count, dtype=np.float32)
    z = rng.standard_normal(net.param_count, dtype=np.float32)
    out = np.empty_like(theta)
    kernels.make_candidate(theta, g, z, 0.5, 0.0, out, net.weight_segments)
    t = theta.copy()
    kernels.sgd_update(t, g, 0.5)
    assert_bitwise(out, t)


# ------------------------------------------------------------------------------ component_stats
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 238510])
def test_component_stats(n):
    rng = np.random.default_rng(n)
    g = (rng.standard_normal(n) * 0.3 + 0.05).astype(np.float32)
    mean, var, sq = kernels.component_stats(g)
    rmean, rvar, rsq = naive.component_stats(g)
    assert mean == pytest.approx(rmean, rel=1e-9, abs=1e-12)
    assert var == pytest.approx(rvar, rel=1e-7, abs=1e-12)
    assert sq == pytest.approx(rsq, rel=1e-12)
    assert var >= 0.0


def test_component_stats_constant_vector_has_zero_variance():
    mean, var, sq = kernels.component_stats(np.full(1001, 0.1, np.float32))
    assert mean == pytest.approx(float(np.float32(0.1)), rel=1e-12)
    assert var == pytest.approx(0.0, abs=1e-12)
    assert var >= 0.0
    assert sq == pytest.approx(1001 * float(np.float32(0.1)) ** 2, rel=1e-12)


# ------------------------------------------------------------------------------ checksum
def test_checksum_matches_reference_and_is_deterministic():
    rng = np.random.default_rng(9)
    theta = rng.standard_normal(1000, dtype=np.float32)
    c = kernels.checksum(theta)
    assert c == kernels.checksum(theta.copy()) == kernels.checksum(theta)
    assert c == naive.checksum(theta)
    assert 0 <= c < 2**63
    assert kernels.checksum(np.zeros(0, np.float32)) == naive.checksum(np.zeros(0, np.float32))


def test_checksum_sees_every_bit_of_every_element():
    rng = np.random.default_rng(10)
    theta = rng.standard_normal(3, dtype=np.float32)
    base = kernels.checksum(theta)
    seen = {base}
    for i in range(theta.size):
        for bit in range(32):
            t = theta.copy()
            t.view(np.uint32)[i] ^= np.uint32(1 << bit)
            c = kernels.checksum(t)
            assert c != base, f"flipping bit {bit} of element {i} does not change the checksum"
            seen.add(c)
    assert len(seen) == 1 + 3 * 32  # all distinct


def test_checksum_large_vector_single_bit_flips():
    net = MLP(784, 300, 10)
    theta = net.init_params(0)
    base = kernels.checksum(theta)
    rng = np.random.default_rng(11)
    for i in [0, net.param_count - 1, *rng.integers(0, net.param_count, 20).tolist()]:
        bit = int(rng.integers(0, 32))
        t = theta.copy()
        t.view(np.uint32)[i] ^= np.uint32(1 << bit)
        assert kernels.checksum(t) != base, (i, bit)


def test_checksum_order_length_and_signed_zero():
    a = np.array([1.0, 2.0, 3.0], np.float32)
    assert kernels.checksum(a) != kernels.checksum(a[::-1].copy())
    assert kernels.checksum(a) != kernels.checksum(np.append(a, np.float32(0.0)))
    assert kernels.checksum(np.zeros(4, np.float32)) != kernels.checksum(np.zeros(5, np.float32))
    z = np.zeros(2, np.float32)
    nz = z.copy()
    nz[1] = -0.0
    assert kernels.checksum(z) != kernels.checksum(nz)


# ------------------------------------------------------------------------------ Workspace / evaluate
def test_workspace_shapes():
    ws = kernels.Workspace(7, 10, 5)
    assert [a.shape for a in ws.Hs] == [a.shape for a in ws.Ds] == [(5, 7)]
    assert ws.Z.shape == (5, 10)
    assert ws.Hs[0].dtype == ws.Ds[0].dtype == ws.Z.dtype == np.float32
    assert ws.nbytes == 4 * (5 * 7 * 2 + 5 * 10)
    assert kernels.Workspace(7, 10, 0).rows == 1
    deep = kernels.Workspace((7, 3), 10, 5)
    assert [a.shape for a in deep.Hs] == [a.shape for a in deep.Ds] == [(5, 7), (5, 3)]
    assert deep.nbytes == 4 * (5 * 10 * 2 + 5 * 10)


@pytest.mark.parametrize("block_rows", [1, 7, 49, 50, 64])
def test_evaluate_in_blocks_equals_one_shot(block_rows):
    rows, n_in, hidden, classes = 50, 20, 7, 10
    net, theta, X, y = make_problem(rows, n_in, hidden, classes, seed=4)
    views = net.views(theta)
    loss, correct = kernels.evaluate(X, y, layers(views), 0, kernels.Workspace(hidden, classes, block_rows))
    # one-shot float64 reference
    ref_loss, ref_correct = naive.evaluate(X, y, views)
    assert correct == ref_correct
    np.testing.assert_allclose(loss, ref_loss, rtol=LOSS_RTOL, atol=0)
    # one-shot kernel pass over all 50 rows
    ws = kernels.Workspace(hidden, classes, rows)
    one_loss, one_correct = kernels.forward_loss(X, y, *layers(views), ws.Hs, ws.Z, 0)
    assert correct == one_correct
    assert loss == pytest.approx(one_loss, rel=1e-6)
    # and the blockwise sum of forward_loss
    ws = kernels.Workspace(hidden, classes, block_rows)
    parts = [kernels.forward_loss(X[s : s + block_rows], y[s : s + block_rows], *layers(views), ws.Hs, ws.Z, 0)
             for s in range(0, rows, block_rows)]
    assert loss == pytest.approx(sum(p[0] for p in parts), rel=1e-12)
    assert correct == sum(p[1] for p in parts)


def test_evaluate_empty_set():
    net = MLP(4, 3, 10)
    theta = net.init_params(0)
    loss, correct = kernels.evaluate(np.zeros((0, 4), np.float32), np.zeros(0, np.int32), net.layer_views(theta),
                                     0, kernels.Workspace(3, 10, 7))
    assert loss == 0.0 and correct == 0


@pytest.mark.parametrize("hidden", [(9,), (9, 7, 5)])
def test_warm_up_compiles_what_training_calls(hidden):
    """After ``warm_up(depth)`` a training step of a network of that depth (its parameters as the model's
    views, float32) compiles nothing more: the warm-up's inputs have the training's types and layouts."""
    from hes_mpi.model import MLP

    kernels.warm_up(len(hidden))
    names = ("forward_loss", "forward_backward")
    before = {k: len(getattr(kernels, k).signatures) for k in names}
    assert all(before.values()), before
    model = MLP(12, hidden, 4, "relu")
    theta = model.init_params(0)
    grad = np.zeros_like(theta)
    (Ws, bs), (gWs, gbs) = model.layer_views(theta), model.layer_views(grad)
    ws = kernels.Workspace(model.hidden, model.n_out, 6)
    rng = np.random.default_rng(1)
    X = rng.random((6, 12), dtype=np.float32)
    y = rng.integers(0, 4, 6).astype(np.int32)
    kernels.forward_loss(X, y, Ws, bs, ws.Hs, ws.Z, model.activation_code)
    kernels.forward_backward(X, y, Ws, bs, gWs, gbs, ws.Hs, ws.Z, ws.Ds, model.activation_code)
    assert {k: len(getattr(kernels, k).signatures) for k in names} == before


# ------------------------------------------------------------------------------ deeper networks
# (rows, widths of the layers from the input, activation)
DEEP = [
    (13, (20, 7, 5, 10), "sigmoid"),
    (13, (20, 7, 5, 10), "relu"),
    (13, (20, 7, 5, 10), "tanh"),
    (64, (784, 64, 32, 10), "relu"),
    (9, (5, 4, 4, 4, 3), "tanh"),
    (33, (30, 16, 10), "relu"),
]
DEEP_IDS = [f"rows{r}-{'-'.join(map(str, d))}-{a}" for r, d, a in DEEP]


def deep_problem(rows, dims, act, seed=0):
    rng = np.random.default_rng([seed, rows, *dims])
    net = MLP(dims[0], dims[1:-1], dims[-1], act, "xavier")
    theta = net.init_params(seed)
    theta[net.offsets[1] : net.offsets[2]] = rng.standard_normal(dims[1], dtype=np.float32) * np.float32(0.1)
    X = rng.random((rows, dims[0]), dtype=np.float32)
    y = rng.integers(0, dims[-1], rows).astype(np.int32)
    return net, theta, X, y


@pytest.mark.parametrize(("rows", "dims", "act"), DEEP, ids=DEEP_IDS)
def test_deep_forward_loss_and_evaluate(rows, dims, act):
    net, theta, X, y = deep_problem(rows, dims, act)
    Ws, bs = net.layer_views(theta)
    ws = kernels.Workspace(net.hidden, net.n_out, rows)
    loss, correct = kernels.forward_loss(X, y, Ws, bs, ws.Hs, ws.Z, net.activation_code)
    ref_loss, ref_correct = naive.deep_forward_loss(X, y, Ws, bs, act)
    assert int(correct) == ref_correct
    np.testing.assert_allclose(loss, ref_loss, rtol=LOSS_RTOL, atol=0)
    ev = kernels.evaluate(X, y, (Ws, bs), net.activation_code, kernels.Workspace(net.hidden, net.n_out, 4))
    assert ev[1] == ref_correct
    np.testing.assert_allclose(ev[0], ref_loss, rtol=LOSS_RTOL, atol=0)


@pytest.mark.parametrize(("rows", "dims", "act"), DEEP, ids=DEEP_IDS)
def test_deep_forward_backward(rows, dims, act):
    net, theta, X, y = deep_problem(rows, dims, act)
    Ws, bs = net.layer_views(theta)
    g = np.full(net.param_count, np.nan, np.float32)
    gWs, gbs = net.layer_views(g)
    ws = kernels.Workspace(net.hidden, net.n_out, rows + 3)
    loss, correct = kernels.forward_backward(X, y, Ws, bs, gWs, gbs, ws.Hs, ws.Z, ws.Ds, net.activation_code)
    ref_loss, ref_correct, rW, rb = naive.deep_forward_backward(X, y, Ws, bs, act)
    assert int(correct) == ref_correct
    np.testing.assert_allclose(loss, ref_loss, rtol=LOSS_RTOL, atol=0)
    assert np.isfinite(g).all()
    for l in range(net.n_layers):
        np.testing.assert_allclose(gWs[l], rW[l], rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=f"gW{l + 1}")
        np.testing.assert_allclose(gbs[l], rb[l], rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=f"gb{l + 1}")


@pytest.mark.parametrize("act", ["sigmoid", "relu", "tanh"])
def test_deep_gradient_against_finite_differences(act):
    """The float64 reference's chain rule is right (central differences of its own loss) for every activation."""
    net, theta, X, y = deep_problem(5, (3, 4, 3, 3), act, seed=2)
    t64 = theta.astype(np.float64)
    fd = central_differences(lambda t: naive.deep_forward_loss(X, y, *net.layer_views(t), act)[0], t64)
    _, _, rW, rb = naive.deep_forward_backward(X, y, *net.layer_views(t64), act)
    ref = np.concatenate([a.ravel() for pair in zip(rW, rb) for a in pair])
    np.testing.assert_allclose(ref, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_activations_within_float32_rounding_and_never_denormal(act):
    b = np.concatenate([np.linspace(-60, 60, 4001), [-1e30, -44.0, -1e-6, -1e-30, 0.0, 1e-30, 1e-6, 44.0, 1e30]])
    b = b.astype(np.float32)
    H = np.zeros((2, b.size), np.float32)
    kernels._activate(H, b, 1 if act == "relu" else 2)
    ref = naive.activate(b.astype(np.float64), act)
    assert np.array_equal(H[0], H[1])
    np.testing.assert_allclose(H[0], ref, rtol=0, atol=1.2e-7)
    tiny = np.finfo(np.float32).tiny
    assert not np.any((H != 0) & (np.abs(H) < tiny))


@pytest.mark.parametrize(("rows", "dims", "act"), DEEP, ids=DEEP_IDS)
@pytest.mark.parametrize("K", [1, 4])
def test_deep_head_losses(rows, dims, act, K):
    net, theta, X, y = deep_problem(rows, dims, act)
    Ws, bs = net.layer_views(theta)
    c = net.n_out
    zs = np.random.default_rng(K).standard_normal((K, Ws[-1].size + c), dtype=np.float32)
    Zcat, zb = kernels.head_perturbations(zs, net.hidden[-1], c)
    ws = kernels.Workspace(net.hidden, c, rows)
    losses = np.zeros(K + 1)
    kernels.head_losses(X, y, Ws, bs, Zcat, zb, 0.3, ws.Hs, ws.Z, np.empty((rows, K * c), np.float32), losses,
                        net.activation_code)
    ref = []
    for z in zs:
        Wk = (*Ws[:-1], Ws[-1] - np.float32(0.3) * z[: Ws[-1].size].reshape(Ws[-1].shape))
        bk = (*bs[:-1], bs[-1] - np.float32(0.3) * z[Ws[-1].size :])
        ref.append(naive.deep_forward_loss(X, y, Wk, bk, act)[0])
    ref.append(naive.deep_forward_loss(X, y, Ws, bs, act)[0])
    np.testing.assert_allclose(losses, ref, rtol=LOSS_RTOL, atol=0)


def lowrank_factors(net, K, R, seed):
    rng = np.random.default_rng([seed, K, R])
    As = tuple(rng.standard_normal((K, a, R), dtype=np.float32) for a, _ in net.layer_dims)
    Bts = tuple(rng.standard_normal((K, R, b), dtype=np.float32) for _, b in net.layer_dims)
    Cs = tuple(rng.standard_normal((K, b), dtype=np.float32) for _, b in net.layer_dims)
    return As, Bts, Cs


@pytest.mark.parametrize(("rows", "dims", "act"), DEEP, ids=DEEP_IDS)
@pytest.mark.parametrize(("K", "R"), [(1, 1), (4, 1), (3, 3)])
def test_lowrank_losses(rows, dims, act, K, R):
    """K low-rank candidates of every layer (+ the unperturbed network), accumulated over two chunks of
    rows, against the same candidates built densely in float64."""
    net, theta, X, y = deep_problem(rows, dims, act)
    Ws, bs = net.layer_views(theta)
    As, Bts, Cs = lowrank_factors(net, K, R, rows)
    L = net.n_layers
    aw = np.linspace(0.05, 0.2, L).astype(np.float32)
    ab = np.linspace(0.1, 0.3, L).astype(np.float32)
    chunk = max(1, (rows + 1) // 2)
    Ss = tuple(np.full(((K + 1) * chunk, b), np.nan, np.float32) for _, b in net.layer_dims)
    Us = tuple(np.empty((chunk, b), np.float32) for _, b in net.layer_dims)
    P0 = np.empty((chunk, net.dims[1]), np.float32)
    T = np.empty((chunk, R), np.float32)
    losses = np.zeros(K + 1)
    for s in range(0, rows, chunk):
        kernels.lowrank_losses(X[s : s + chunk], y[s : s + chunk], Ws, bs, As, Bts, Cs, aw, ab, Ss, P0, T, Us,
                               losses, net.activation_code)
    ref = naive.lowrank_losses(X, y, Ws, bs, As, Bts, Cs, aw, ab, act)
    np.testing.assert_allclose(losses, ref, rtol=2e-5, atol=0)
    # the unperturbed block is the plain forward pass
    ws = kernels.Workspace(net.hidden, net.n_out, rows)
    plain = kernels.forward_loss(X, y, Ws, bs, ws.Hs, ws.Z, net.activation_code)[0]
    assert losses[K] == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("R", [1, 2, 5])
def test_lowrank_update(R):
    rng = np.random.default_rng(R)
    W = rng.standard_normal((17, 9), dtype=np.float32)
    A = rng.standard_normal((17, R), dtype=np.float32)
    Bt = rng.standard_normal((R, 9), dtype=np.float32)
    got = W.copy()
    kernels.lowrank_update(got, A, Bt, 0.37)
    np.testing.assert_allclose(got, W.astype(np.float64) - 0.37 * (A.astype(np.float64) @ Bt), rtol=1e-5, atol=1e-5)
    # the float32 expression every rank rebuilds (rank-1 terms in order) is exactly reproducible
    again = W.copy()
    kernels.lowrank_update(again, A, Bt, 0.37)
    assert_bitwise(got, again)
