"""Dataset readers: MNIST's stored arrays, IDX files and the synthetic problem, each loaded as one rank's
:class:`~hes_mpi.data.shard.Shard`.

``mnist``
    The arrays ``hes-mpi data fetch mnist`` stored and verified (:mod:`.fetch`), memory-mapped; never a pickle.
``idx:DIR``
    A folder with the four standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), raw or gzipped (``.gz``). The last
    ``--dev-size`` (default 10,000) training images are the dev set; pixels are scaled by 1/255.
``synthetic[:N[:SEED]]``
    A generated 10-class problem with 32 features (Gaussian clusters), N training examples
    (default 4,000) plus 1,000 dev and 1,000 test, deterministic from SEED (default 0).
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .fetch import MANIFEST, MNIST_SCALE, MNIST_SPLITS, mnist_paths, mnist_status, resolve_data_dir
from .shard import Shard, block

IDX_SCALE = 1.0 / 255.0
IDX_FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}


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
def _open_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{what}: {path} is missing; run 'hes-mpi data fetch mnist'") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"{what}: {path} is corrupt ({e}); run 'hes-mpi data fetch mnist --force'") from None


def _load_mnist(root: Path, rank: int, size: int) -> Shard:
    paths = mnist_paths(root)
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
        paths = mnist_paths(resolve_data_dir(data_dir))
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
