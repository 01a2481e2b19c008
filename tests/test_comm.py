"""The instrumented communicator, inside an MPI job of any size: what every collective returns and records
(the wire-byte model it records is tested in test_collectives.py):

    mpiexec -n 2 python -m pytest -p no:cacheprovider --with-mpi -m mpi tests/test_comm.py
    mpiexec -n 4 python -m pytest -p no:cacheprovider --with-mpi -m mpi tests/test_comm.py

Run serially with ``--with-mpi -m mpi`` the MPI tests check the 1-rank case.
"""

from __future__ import annotations

import numpy as np
import pytest

from hes_mpi.collectives import wire_bytes as wire_bytes_model
from hes_mpi.comm import SilentExit
from hes_mpi.errors import RunError, UsageError
from hes_mpi.schema import OPS, PHASES, RECORD_DTYPE


# ------------------------------------------------------------------------------------------ inside MPI
@pytest.fixture(scope="module")
def comm():
    from hes_mpi.comm import InstrumentedComm

    return InstrumentedComm()


def op_of(rec) -> list[str]:
    return [OPS[i] for i in rec["op"]]


def seq_everywhere(comm, seq: int) -> np.ndarray:
    """Every rank's value of ``seq`` (one uninstrumented Allgather)."""
    out = np.empty(comm.size, dtype=np.int64)
    comm.raw().Allgather(np.array([seq], dtype=np.int64), out)
    return out


def check_record(comm, row, op, sent, recv, wire, phase, iteration):
    assert OPS[row["op"]] == op
    assert (row["bytes_sent"], row["bytes_recv"], row["wire_bytes"]) == (sent, recv, wire)
    assert PHASES[row["phase"]] == phase and row["iteration"] == iteration
    assert row["t_exit"] >= row["t_enter"]
    assert np.all(seq_everywhere(comm, int(row["seq"])) == row["seq"])  # the same call on every rank


@pytest.mark.mpi
def test_allreduce_in_place(comm):
    comm.drain()
    comm.set_phase("grad", 7)
    buf = np.arange(5, dtype=np.float64) + comm.rank
    out = comm.Allreduce(buf)
    assert out is buf
    assert np.array_equal(buf, comm.size * np.arange(5) + sum(range(comm.size)))
    rec = comm.drain()
    assert rec.dtype == RECORD_DTYPE and rec.shape == (1,)
    check_record(comm, rec[0], "allreduce", 40, 40, wire_bytes_model("allreduce", 40, comm.size, family=comm.family, count=5), "grad", 7)


@pytest.mark.mpi
def test_half_sum_adds_float16_bit_patterns_as_float32_rounded_back(comm):
    """``op="half_sum"``: every rank gets the same float16 sum of the ranks' halves, carried as uint16 (2 bytes a
    value on the wire, recorded as such); on 2 ranks it is float16(float32(a) + float32(b)), one rounding."""
    rng = np.random.default_rng(42)
    values = (rng.standard_normal((comm.size, 5000)) * 10.0 ** rng.integers(-9, 4, (comm.size, 5000)))
    halves = values.astype(np.float16)
    comm.drain()
    bits = halves[comm.rank].view(np.uint16).copy()
    comm.Allreduce(bits, op="half_sum")
    rec = comm.drain()
    assert rec[0]["bytes_sent"] == 2 * 5000
    assert np.all(seq_everywhere(comm, int(np.bitwise_xor.reduce(bits.astype(np.int64)))) ==
                  int(np.bitwise_xor.reduce(bits.astype(np.int64))))  # the same result on every rank
    if comm.size == 2:
        want = (halves[0].astype(np.float32) + halves[1].astype(np.float32)).astype(np.float16)
        assert np.array_equal(bits, want.view(np.uint16))
    exact = halves.astype(np.float64).sum(axis=0)
    scale = np.abs(halves.astype(np.float64)).sum(axis=0)  # bounds every partial sum, whatever the order
    close = scale < 6e4
    got = bits.view(np.float16).astype(np.float64)
    # each of the size - 1 additions rounds once: at most half a unit in the last place of a partial sum
    assert np.all(np.abs(got[close] - exact[close]) <= comm.size * (2.0 ** -11 * scale[close] + 6e-8))


@pytest.mark.mpi
def test_allreduce_out_of_place_and_other_ops(comm):
    comm.drain()
    comm.set_phase("es", 3)
    comm.set_phase("eval")  # no iteration: the previous one stays
    n = 1000  # 4000 bytes: above the short-message limit
    buf = np.full(n, comm.rank + 1, dtype=np.float32)
    out = np.empty(n, dtype=np.float32)
    got = comm.Allreduce(buf, out)
    assert got is out
    assert np.all(out == comm.size * (comm.size + 1) / 2)
    assert np.all(buf == comm.rank + 1)  # the send buffer is left alone
    ints = np.array([comm.rank, -comm.rank], dtype=np.int64)
    assert comm.Allreduce(ints.copy(), op="max").tolist() == [comm.size - 1, 0]
    assert comm.Allreduce(ints.copy(), op="min").tolist() == [0, 1 - comm.size]
    rec = comm.drain()
    assert op_of(rec) == ["allreduce"] * 3
    check_record(comm, rec[0], "allreduce", 4000, 4000, wire_bytes_model("allreduce", 4000, comm.size, family=comm.family, count=1000), "eval", 3)
    check_record(comm, rec[1], "allreduce", 16, 16, wire_bytes_model("allreduce", 16, comm.size, family=comm.family, count=2), "eval", 3)
    assert rec["seq"].tolist() == [rec["seq"][0] + i for i in range(3)]  # one number per collective


@pytest.mark.mpi
def test_minloc(comm):
    comm.drain()
    comm.set_phase("es", 11)
    size, rank = comm.size, comm.rank
    assert comm.minloc(1.5, rank) == (1.5, 0)  # a tie everywhere: the lowest index
    assert comm.minloc(float(size - rank), rank) == (1.0, size - 1)
    # a tie between all ranks but 0, which holds more
    assert comm.minloc(3.0 if rank == 0 else 1.0, rank) == ((1.0, 1) if size > 1 else (3.0, 0))
    # the index need not be the rank; the value is a double
    value, index = comm.minloc(0.1 + rank, 100 + rank)
    assert value == 0.1 and index == 100 and type(value) is float and type(index) is int
    rec = comm.drain()
    assert op_of(rec) == ["minloc"] * 4
    for row in rec:
        check_record(comm, row, "minloc", 12, 12, wire_bytes_model("minloc", 12, size, family=comm.family, count=1), "es", 11)


@pytest.mark.mpi
def test_allgather(comm):
    comm.drain()
    comm.set_phase("telemetry", 2)
    send = np.array([comm.rank, 10 * comm.rank], dtype=np.int64)
    recv = np.empty(2 * comm.size, dtype=np.int64)
    assert comm.Allgather(send, recv) is recv
    assert recv.tolist() == [v for r in range(comm.size) for v in (r, 10 * r)]
    rec = comm.drain()
    assert rec.shape == (1,)
    check_record(comm, rec[0], "allgather", 16, 16 * comm.size, 16 * (comm.size - 1), "telemetry", 2)


@pytest.mark.mpi
@pytest.mark.parametrize("where", ["first", "last"])
def test_bcast_counts_sent_on_the_root_and_received_elsewhere(comm, where):
    root = 0 if where == "first" else comm.size - 1
    comm.drain()
    comm.set_phase("setup", 0)
    buf = np.full(3, comm.rank, dtype=np.float64)
    assert comm.Bcast(buf, root=root) is buf
    assert np.all(buf == root)
    rec = comm.drain()
    assert rec.shape == (1,)
    sent, recv = (24, 0) if comm.rank == root else (0, 24)
    check_record(comm, rec[0], "bcast", sent, recv, wire_bytes_model("bcast", 24, comm.size, family=comm.family, count=3), "setup", 0)


@pytest.mark.mpi
@pytest.mark.parametrize("where", ["first", "last"])
def test_gatherv_concatenates_on_the_root(comm, where):
    root = 0 if where == "first" else comm.size - 1
    comm.drain()
    comm.set_phase("telemetry", 5)
    send = np.full(comm.rank + 1, comm.rank, dtype=np.float32)  # rank r sends r + 1 values
    got = comm.Gatherv(send, root=root)
    if comm.rank == root:
        assert got.dtype == np.float32
        assert got.tolist() == [r for r in range(comm.size) for _ in range(r + 1)]
    else:
        assert got is None
    rec = comm.drain()
    assert op_of(rec) == ["allgather", "gather"]  # the counts first, then the data
    check_record(comm, rec[0], "allgather", 8, 8 * comm.size, 8 * (comm.size - 1), "telemetry", 5)
    n = 4 * (comm.rank + 1)
    total = 4 * comm.size * (comm.size + 1) // 2
    if comm.rank == root:
        check_record(comm, rec[1], "gather", n, total, 0, "telemetry", 5)
    else:
        check_record(comm, rec[1], "gather", n, 0, n, "telemetry", 5)
    assert rec["seq"][1] == rec["seq"][0] + 1


@pytest.mark.mpi
def test_barrier_records_no_bytes(comm):
    comm.drain()
    comm.set_phase("check", 9)
    comm.Barrier()
    rec = comm.drain()
    assert rec.shape == (1,)
    check_record(comm, rec[0], "barrier", 0, 0, 0, "check", 9)


@pytest.mark.mpi
def test_drain_returns_the_records_and_empties(comm):
    comm.drain()
    calls = comm.total_calls
    for _ in range(3):
        comm.Barrier()
    first = comm.drain()
    assert first.shape == (3,) and comm.n_records == 0
    assert comm.total_calls == calls + 3
    assert comm.drain().shape == (0,)
    comm.Allreduce(np.zeros(2))
    assert op_of(first) == ["barrier"] * 3  # a copy: later calls do not overwrite it
    assert op_of(comm.drain()) == ["allreduce"]


@pytest.mark.mpi
def test_records_grow_past_the_initial_capacity():
    from hes_mpi.comm import InstrumentedComm

    small = InstrumentedComm(capacity=2)
    small.set_phase("eval", 1)
    for i in range(5):
        small.Allreduce(np.array([float(i)]))
    rec = small.drain()
    assert rec["seq"].tolist() == [0, 1, 2, 3, 4]
    assert op_of(rec) == ["allreduce"] * 5 and np.all(rec["bytes_sent"] == 8)
    assert small.records.shape[0] >= 5


@pytest.mark.mpi
def test_raw_records_nothing(comm):
    comm.set_phase("eval", 1)
    comm.drain()
    calls = comm.total_calls
    raw = comm.raw()
    buf = np.full(4, 1.0)
    assert np.all(raw.Allreduce(buf) == comm.size)
    out = np.empty(4)
    assert np.all(raw.Allreduce(np.full(4, 2.0), out, op="max") == 2.0)
    assert raw.minloc(float(comm.size - comm.rank), comm.rank) == (1.0, comm.size - 1)
    gathered = np.empty(comm.size, dtype=np.int64)
    assert raw.Allgather(np.array([comm.rank], dtype=np.int64), gathered).tolist() == list(range(comm.size))
    b = np.array([comm.rank], dtype=np.int64)
    assert raw.Bcast(b, root=comm.size - 1)[0] == comm.size - 1
    raw.Barrier()
    raw.set_phase("grad", 99)
    assert comm.drain().shape == (0,) and comm.total_calls == calls
    assert (comm.phase, comm.iteration) == ("eval", 1)
    comm.Barrier()  # the instrumented calls go on numbering in step
    rec = comm.drain()
    assert np.all(seq_everywhere(comm, int(rec["seq"][0])) == rec["seq"][0])


@pytest.mark.mpi
def test_uninstrumented_comm_counts_calls_but_keeps_no_records():
    from hes_mpi.comm import InstrumentedComm

    quiet = InstrumentedComm(instrument=False)
    quiet.Allreduce(np.ones(3))
    quiet.Barrier()
    assert quiet.total_calls == 2 and quiet.drain().shape == (0,) and quiet.comm_seconds >= 0


# ------------------------------------------------------------------------------------------------ agree
FAILING = {
    "last": lambda size: {size - 1},
    "all": lambda size: set(range(size)),
    "upper_half": lambda size: set(range(size // 2, size)),
}


@pytest.mark.mpi
@pytest.mark.parametrize("error", [UsageError, RunError])
@pytest.mark.parametrize("who", list(FAILING))
def test_agree_lowest_failing_rank_reraises_the_others_exit_silently(comm, error, who):
    failing = FAILING[who](comm.size)
    lowest = min(failing)

    def maybe_fail(a, b=0):
        if comm.rank in failing:
            raise error(f"failed on rank {comm.rank}")
        return a + b

    comm.drain()
    comm.set_phase("setup", 0)
    if comm.rank == lowest:
        with pytest.raises(error, match=f"^failed on rank {lowest}$"):
            comm.agree(maybe_fail, 1, b=2)
    else:
        with pytest.raises(SilentExit) as e:
            comm.agree(maybe_fail, 1, b=2)
        assert e.value.exit_code == error.exit_code
    rec = comm.drain()
    assert op_of(rec) == ["allreduce"] and rec["bytes_sent"][0] == 16  # one Allreduce of two int64
    # nobody hangs or is left behind: every rank is at the same collective next
    assert comm.agree(lambda a, b=0: a + b, 1, b=2) == 3
    assert np.all(seq_everywhere(comm, comm._seq) == comm._seq)


@pytest.mark.mpi
def test_agree_other_exceptions_are_not_caught(comm):
    # (raised on every rank alike, so no rank waits in agree's Allreduce)
    def broken():
        raise ValueError("a bug, not a user error")

    with pytest.raises(ValueError):
        comm.agree(broken)
    assert comm.agree(lambda: "ok") == "ok"


# ---------------------------------------------------------------------------------- small helpers
@pytest.mark.mpi
def test_same_everywhere(comm):
    size, rank = comm.size, comm.rank
    assert comm.same_everywhere(7) is True
    assert comm.same_everywhere(-5) is True
    assert comm.same_everywhere(2**62 + 12345) is True
    assert comm.same_everywhere(rank) is (size == 1)
    assert comm.same_everywhere(2**62 + (rank == size - 1)) is (size == 1)  # only the last rank differs, by 1
    assert comm.same_everywhere(-rank) is (size == 1)


@pytest.mark.mpi
def test_bcast_str(comm):
    size, rank = comm.size, comm.rank
    text = "héllo wörld ✓" if rank == 0 else "ignored"
    assert comm.bcast_str(text) == "héllo wörld ✓"
    assert comm.bcast_str(f"from rank {rank}", root=size - 1) == f"from rank {size - 1}"
    assert comm.bcast_str("" if rank == 0 else "x") == ""
    assert comm.bcast_str("a" * 100, max_bytes=16) == "a" * 15  # cut to fit, with the final NUL
    comm.drain()
    comm.bcast_str("abc", max_bytes=64)
    rec = comm.drain()
    assert op_of(rec) == ["bcast"]
    assert rec["bytes_sent"][0] + rec["bytes_recv"][0] == 64  # one fixed-size buffer


@pytest.mark.mpi
def test_sync_barrier_precedes_every_collective_of_an_algorithm_phase(comm):
    """--sync-barrier: a barrier before each allreduce, minloc, allgather and bcast of an algorithm phase
    (top-k and weighted recombination exchange by allgather), none in the tool's phases."""
    from hes_mpi.comm import InstrumentedComm

    synced = InstrumentedComm(sync_barrier=True)
    buf, gathered = np.zeros(4), np.zeros(4 * comm.size)
    for phase in ("grad", "es", "eval"):
        synced.set_phase(phase, 1)
        synced.Allreduce(buf)
        synced.minloc(1.0, 0)
        synced.Allgather(buf, gathered)
        synced.Bcast(buf)
    ops = op_of(synced.drain())
    calls = ["allreduce", "minloc", "allgather", "bcast"]
    with_barriers = [x for op in calls for x in ("barrier", op)]
    assert ops == with_barriers * 2 + calls


@pytest.mark.mpi
def test_strings_from_mpi_hold_no_nul_and_go_into_an_hdf5_attribute(comm, tmp_path_factory):
    """Open MPI 5.0's MPI_Get_library_version counts its terminating NUL (open-mpi/ompi#14411); the string
    went into the run log's /environment as it was, and HDF5 refused it: no train --out could start."""
    import h5py

    texts = [comm.library_version(), comm.vendor(), *comm.processor_names()]
    assert all(t and "\0" not in t for t in texts), texts
    path = tmp_path_factory.mktemp(f"strings{comm.rank}") / "a.h5"
    with h5py.File(path, "w") as f:
        for i, t in enumerate(texts):
            f.attrs[f"s{i}"] = t


def test_c_string_ends_at_the_first_nul():
    from hes_mpi.comm import c_string

    assert c_string("Open MPI v5.0.11, Sep 16, 2026\0") == "Open MPI v5.0.11, Sep 16, 2026"
    assert c_string("MPICH Version: 4.3.2") == "MPICH Version: 4.3.2"
    assert c_string("a\0b") == "a" and c_string("") == ""


@pytest.mark.mpi
def test_stall_medians_are_kept_per_operation_and_size_class(comm):
    """The communicator tells the watchdog each call's kind: a 12-byte MINLOC and a 256 KiB Allreduce get
    running medians of their own (so that a small call that hangs is noticed in seconds); setup calls none."""
    comm.watch_collectives(0, stall_factor=50)  # warnings only, no timeout
    try:
        comm.set_phase("es", 3)
        for _ in range(6):
            comm.minloc(1.0, comm.rank)
        comm.set_phase("grad", 4)
        big = np.ones(1 << 16, dtype=np.float32)
        for _ in range(6):
            comm.Allreduce(big)
        comm.set_phase("setup", -1)
        comm.Allreduce(np.zeros(2))
        stalls = comm.watchdog.stalls
        small = OPS.index("minloc") << 6 | comm._minloc_type_size.bit_length()
        large = OPS.index("allreduce") << 6 | (big.nbytes).bit_length()
        assert sorted(stalls._durations) == sorted([small, large])
        assert stalls.median(small) is not None and stalls.median(large) is not None
    finally:
        comm.watch_collectives(0)
        comm.drain()
