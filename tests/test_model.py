"""The flat-parameter MLP: layout, views, initialisation, L2 term."""

from __future__ import annotations

import numpy as np
import pytest

from hes_mpi.model import DTYPE, MLP


def test_param_count_and_offsets_784_300_10():
    net = MLP(784, 300, 10)
    assert net.shapes == ((784, 300), (300,), (300, 10), (10,))
    assert net.offsets == (0, 235200, 235500, 238500, 238510)
    assert net.param_count == 238510 == 784 * 300 + 300 + 300 * 10 + 10
    np.testing.assert_array_equal(net.weight_segments, [[0, 235200], [235500, 238500]])
    assert net.weight_segments.dtype == np.int64


@pytest.mark.parametrize("dims", [(784, 300, 10), (3, 1, 2), (32, 7, 10)])
def test_views_are_views_into_theta(dims):
    net = MLP(*dims)
    theta = np.arange(net.param_count, dtype=DTYPE)
    views = net.views(theta)
    assert [v.shape for v in views] == list(net.shapes)
    for v, (a, b) in zip(views, zip(net.offsets[:-1], net.offsets[1:])):
        assert v.dtype == np.float32
        assert v.flags.c_contiguous
        assert np.shares_memory(v, theta)
        assert not v.flags.owndata
        np.testing.assert_array_equal(v.ravel(), theta[a:b])
    # row-major layout: W1[i, j] is theta[i * hidden + j]
    W1, _, W2, _ = views
    n_in, hidden, n_out = dims
    assert W1[n_in - 1, hidden - 1] == theta[n_in * hidden - 1]
    assert W2[0, n_out - 1] == theta[net.offsets[2] + n_out - 1]


def test_writing_through_a_view_changes_theta():
    net = MLP(5, 4, 3)
    theta = np.zeros(net.param_count, DTYPE)
    W1, b1, W2, b2 = net.views(theta)
    W1[2, 3] = 1.5
    b1[:] = 2.0
    W2 *= 0
    W2[3, 2] = -1.0
    b2[1] = 7.0
    o = net.offsets
    assert theta[2 * 4 + 3] == 1.5
    np.testing.assert_array_equal(theta[o[1] : o[2]], 2.0)
    assert theta[o[2] + 3 * 3 + 2] == -1.0
    assert theta[o[3] + 1] == 7.0
    assert np.count_nonzero(theta) == 1 + 4 + 1 + 1
    # and the other way round
    theta[o[3]] = 9.0
    assert b2[0] == 9.0


def test_init_params_deterministic_per_seed():
    net = MLP(20, 7, 10)
    a = net.init_params(0)
    b = net.init_params(0)
    c = net.init_params(1)
    assert a.dtype == np.float32 and a.shape == (net.param_count,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # the same seed gives the same weights whatever else was drawn before
    np.random.seed(123)
    np.testing.assert_array_equal(net.init_params(0), a)


def test_init_params_statistics_784_300_10():
    net = MLP(784, 300, 10)
    theta = net.init_params(0)
    W1, b1, W2, b2 = net.views(theta)
    assert theta.dtype == np.float32
    assert np.isfinite(theta).all()
    # standard normal weights: 235,200 samples, mean within ~5 sigma/sqrt(n), std close to 1
    assert abs(float(W1.mean())) < 0.01
    assert float(W1.std()) == pytest.approx(1.0, abs=0.01)
    assert abs(float(W2.mean())) < 0.1
    assert float(W2.std()) == pytest.approx(1.0, abs=0.05)
    assert 4.0 < float(np.abs(W1).max()) < 7.0
    # zero biases
    assert not b1.any() and not b2.any()
    # W2 is not a copy of the start of W1 (the generator advances between segments)
    assert not np.array_equal(W1.ravel()[: W2.size], W2.ravel())


def test_l2_term_matches_numpy():
    net = MLP(784, 300, 10)
    theta = net.init_params(3)
    W1, b1, W2, b2 = net.views(theta)
    b1[:] = 5.0  # biases do not count
    b2[:] = -5.0
    l2 = 1e-4
    want = 0.5 * l2 * (np.sum(W1.astype(np.float64) ** 2) + np.sum(W2.astype(np.float64) ** 2))
    got = net.l2_term(theta, l2)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-12)
    assert net.l2_term(theta, 0.0) == 0.0
    assert MLP(2, 2, 2).l2_term(np.array([1, 2, 3, 4, 9, 9, 1, 1, 1, 1, 9, 9], DTYPE), 2.0) == pytest.approx(34.0)


def test_deeper_networks_lay_out_every_layer_in_one_vector():
    net = MLP(784, (1024, 512), 10, "relu", "he")
    assert net.dims == (784, 1024, 512, 10) and net.layers == "784-1024-512-10" and net.n_layers == 3
    assert net.param_count == 784 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10
    theta = np.arange(net.param_count, dtype=np.float32)
    Ws, bs = net.layer_views(theta)
    assert [W.shape for W in Ws] == [(784, 1024), (1024, 512), (512, 10)] and [b.shape for b in bs] == [(1024,), (512,), (10,)]
    assert all(np.shares_memory(v, theta) for v in (*Ws, *bs))
    assert theta[net.layer_slice(1)][0] == Ws[1][0, 0] and theta[net.layer_slice(1)][-1] == bs[1][-1]
    assert net.weight_segments.tolist() == [[0, 802816], [803840, 1328128], [1328640, 1333760]]


@pytest.mark.parametrize(("init", "std"), [("normal", lambda a, b: 1.0), ("xavier", lambda a, b: np.sqrt(2 / (a + b))),
                                           ("he", lambda a, b: np.sqrt(2 / a))])
def test_initialisations_scale_each_layer(init, std):
    net = MLP(784, (512, 256), 10, "relu", init)
    theta = net.init_params(3)
    Ws, bs = net.layer_views(theta)
    for (a, b), W in zip(net.layer_dims, Ws):
        assert W.std() == pytest.approx(std(a, b), rel=0.05)
    assert all(not b.any() for b in bs)


def test_the_posters_network_starts_as_it_always_has():
    """One hidden layer, normal init: the same parameters as MLP(784, 300, 10) ever gave (one Philox stream
    drawn layer by layer), and an int, a string or a 1-tuple of widths are the same network."""
    a, b, c = MLP(784, 300, 10), MLP(784, "300", 10), MLP(784, (300,), 10, "sigmoid", "normal")
    assert a == b == c and a.hidden == (300,)
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([0x1417, 5])))
    want = np.zeros(a.param_count, np.float32)
    for s, e in a.weight_segments:
        want[s:e] = rng.standard_normal(e - s, dtype=np.float32)
    assert np.array_equal(a.init_params(5).view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("bad", ["", "0", "300,", "3x", "-1", "10,,10"])
def test_bad_widths_are_refused(bad):
    with pytest.raises(ValueError):
        MLP(784, bad, 10)
