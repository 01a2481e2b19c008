"""What it costs to flush the run log by copy and rename instead of appending in place.

Usage: python benchmarks/runlog_flush.py RUN.h5 [--dir DIR] [--reps 3]

Replays a finished run log (e.g. a 30-epoch MNIST run) into two new ones, epoch by epoch, one flush per
epoch with that epoch's rows and call records, then the final flush with the parameters: once with the
writer as it is (each flush a copy of the file, appended to, fsynced and renamed over it, with the folder
fsynced) and once appending in place (the writer before the change: the same HDF5 writes, no copy, no
fsync, no rename). The two alternate flush by flush, in swapped order on odd epochs, so that a slow spell
of the machine lands on both. Prints the median time of a flush of each, by file size, the total over the
run, and the copy and the fsync of the final file alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hes_mpi import atomicfile, runlog
from hes_mpi.runlog import RunLog, RunLogWriter


@contextlib.contextmanager
def in_place(path, copy=True):
    """The flush before the change: HDF5 appends to the file itself."""
    yield str(path)


def epochs_of(path: str):
    """The run's epochs as the flushes wrote them: (epoch row, iteration columns, records, their ranks)."""
    with RunLog(path) as rl:
        cfg, env = rl.config, rl.environment
        ep, it, rec = rl.table("epochs"), rl.table("iterations"), rl.records()
        theta = rl.theta()
        clock = {k: rl.f["clock"][k][()] for k in ("offset_start", "rtt_start", "offset_end", "rtt_end")}
        final = {k: v for k, v in rl.f["final"].attrs.items()}
    n = ep["epoch"].size
    rec_parts = np.array_split(np.arange(rec["seq"].size), n)
    rec_dtype = np.dtype([(k, rec[k].dtype) for k in rec if k != "rank"])
    out = []
    for e in range(n):
        rows = it["epoch"] == e
        recs = np.empty(rec_parts[e].size, dtype=rec_dtype)
        for k in rec_dtype.names:
            recs[k] = rec[k][rec_parts[e]]
        out.append(({k: v[e] for k, v in ep.items()}, {k: v[rows] for k, v in it.items()}, recs,
                    rec["rank"][rec_parts[e]]))
    return cfg, env, out, theta, clock, final


def timed_flush(writer: RunLogWriter, how, epoch, final=None) -> float:
    row, cols, recs, ranks = epoch
    writer.add_epoch(row)
    writer.add_iterations(cols)
    writer.add_records(recs, ranks)
    saved = atomicfile.replaced
    runlog.atomicfile.replaced = how
    try:
        t0 = time.perf_counter()
        writer.flush(final=final)
        return time.perf_counter() - t0
    finally:
        runlog.atomicfile.replaced = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--dir", default=None, help="where to write the two logs (default: a temporary folder)")
    ap.add_argument("--reps", type=int, default=3, help="replays of the whole run (default 3)")
    args = ap.parse_args(argv)
    cfg, env, epochs, theta, clock, final_attrs = epochs_of(args.log)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="runlog_flush_"))
    times = {"rename": [], "in place": []}  # per (rep, epoch)
    sizes = []
    for rep in range(args.reps):
        writers = {}
        for name in times:
            p = folder / f"{name.replace(' ', '_')}.h5"
            writers[name] = RunLogWriter(str(p), True, cfg, env, ["bench"])
        for e, epoch in enumerate(epochs):
            order = list(times) if (rep + e) % 2 == 0 else list(reversed(times))
            last = e == len(epochs) - 1
            for name in order:
                how = atomicfile.replaced if name == "rename" else in_place
                final = None
                if last:
                    writers[name].set_clock(*clock.values(), 1e-9, False)
                    final = {"theta": theta.copy(), **final_attrs}
                times[name].append(timed_flush(writers[name], how, epoch, final))
            if rep == 0:
                sizes.append(os.path.getsize(folder / "rename.h5"))
    n = len(epochs)
    path = folder / "rename.h5"
    copy_s, sync_s, folder_s = [], [], []
    for _ in range(5):
        t0 = time.perf_counter()
        shutil.copyfile(path, f"{path}.copy")
        copy_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fd = os.open(f"{path}.copy", os.O_RDWR)
        os.fsync(fd)
        os.close(fd)
        sync_s.append(time.perf_counter() - t0)
        os.replace(f"{path}.copy", f"{path}.moved")
        t0 = time.perf_counter()
        atomicfile._sync_folder(str(folder))
        folder_s.append(time.perf_counter() - t0)
        os.unlink(f"{path}.moved")
    print(f"{args.log}: {n} epochs, {args.reps} replays; log size after epoch 1 / {n // 2} / {n} (final flush): "
          f"{sizes[0] / 1e6:.2f} / {sizes[n // 2 - 1] / 1e6:.2f} / {sizes[-1] / 1e6:.2f} MB")
    print("flush        median ms (epochs 1-5)  (last 5 epochs)  final flush  total per run (s)")
    for name, t in times.items():
        per = np.array(t).reshape(args.reps, n)
        first = statistics.median(per[:, :5].ravel()) * 1e3
        late = statistics.median(per[:, n - 6:n - 1].ravel()) * 1e3
        fin = statistics.median(per[:, -1]) * 1e3
        total = statistics.median(per.sum(axis=1))
        print(f"{name:12s} {first:22.1f} {late:16.1f} {fin:12.1f} {total:18.3f}")
    print(f"the final file ({sizes[-1] / 1e6:.2f} MB) alone: copy {statistics.median(copy_s) * 1e3:.1f} ms, "
          f"fsync of the copy {statistics.median(sync_s) * 1e3:.1f} ms, fsync of the folder after a rename "
          f"{statistics.median(folder_s) * 1e3:.1f} ms (medians of 5)")
    if args.dir is None:
        shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
