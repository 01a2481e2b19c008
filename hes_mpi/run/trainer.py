"""The training loop: the schedule of one run, evaluation, consistency checks, checkpoints and progress.

Its parts live apart: the setup shared with the benchmarks in :mod:`.setup`, the per-iteration record and
its way into the run log in :mod:`.recorder`, signals, faults and the abort policy in :mod:`.control`.
"""

from __future__ import annotations

import math
import os
import time
import zlib

import numpy as np

from .. import checkpoint, kernels
from ..algorithms import make_algorithm
from ..config import RunConfig
from ..data import Batch, global_batches, local_rows
from ..errors import Diverged, RunError, UsageError
from ..log import get_logger
from ..noise import Perturbations
from ..runlog import RunLogWriter, collapse_summary
from ..schema import ES_KINDS, GRADIENT_KINDS, StepKind
from ..telemetry import held_bytes, traced_peak
from ..watchdog import default_collective_timeout
from .control import Fault, Stopped, pause_in_flush_from_env, stop_on_signals, stop_requested
from .progress import Progress, duration
from .recorder import Recorder
from .setup import environment, load_run_data, set_threads, setup_objects_frozen, warm_kernels

log = get_logger("train")


class Trainer:
    def __init__(self, cfg: RunConfig, comm, argv: list[str] | None = None):
        self.cfg = cfg
        self.comm = comm
        self.argv = argv or []
        comm.drain()  # a previous run in the same job (the comparison suite) keeps its own records
        comm.set_phase("setup", -1)
        comm.emulation = None
        # the setup's collectives are watched too (with their own, generous limit): a rank that hangs or dies
        # while the others agree on data, threads or a checkpoint ends the job instead of holding it
        timeout = cfg.collective_timeout if cfg.collective_timeout is not None else default_collective_timeout()
        comm.watch_collectives(timeout, stall_factor=cfg.stall_factor)
        if not comm.same_everywhere(zlib.crc32(cfg.to_json().encode())):
            raise RunError("ranks were started with different options", everywhere=True)
        self.threads = set_threads(comm, cfg.threads)
        if cfg.emulate_net:
            from ..collectives import parse_network

            comm.emulate_network(*parse_network(cfg.emulate_net))
        self.shard, self.model = load_run_data(comm, cfg)
        self.processor_names = comm.processor_names()
        self.ckpt_path = cfg.checkpoint or checkpoint.default_path(cfg.out)
        # one answer for every rank: a checkpoint only some ranks see would have them restore and start afresh
        found = cfg.resume and comm.exists_everywhere(self.ckpt_path, "checkpoint")
        state = comm.agree(self._resume_state, found)
        pause_in_flush_from_env()
        self.writer = comm.agree(self._open_writer, state)
        warm_kernels(comm, len(self.model.hidden), compress=cfg.compress != "none")
        self.theta = self.model.init_params(cfg.seed)
        self.iters_per_epoch = self.shard.n_train // cfg.batch
        max_rows = min(self.shard.hi - self.shard.lo, cfg.batch)
        self.algo = make_algorithm(cfg, self.model, comm, max_rows, cfg.batch)
        self.eval_ws = kernels.Workspace(self.model.hidden, self.model.n_out, kernels.EVAL_BLOCK)
        self.xbuf = np.empty((max_rows, self.model.n_in), dtype=np.float32)
        self.ybuf = np.empty(max_rows, dtype=np.int32)
        self._evalbuf = np.zeros(4, dtype=np.float64)
        self.iteration = 0
        self._fault = Fault.from_env(comm.rank)
        self.checks = 0
        self._checkbuf = np.zeros(3, dtype=np.int64)
        self.start = (0, 0)
        self.ckpt_written = False
        self.dev_history: list[float] = []  # dev accuracy of the epochs this process trained
        self.dev_first_epoch = 0
        self.collapse_warned = False
        if state is not None:
            self._restore(state)
            self.ckpt_written = True  # the checkpoint it resumed from
        comm.watch_collectives(timeout, self._checkpoint_hint(), cfg.stall_factor)

    def _open_writer(self, state: dict | None):
        cfg = self.cfg
        if self.comm.rank != 0 or not cfg.out:
            return None
        env = environment(self.comm, self.threads, self.shard, self.model, self.processor_names)
        rows = None
        if state is not None:
            rows = {k: int(state[f"rows_{k}"]) for k in ("epochs", "iterations", "records")}
        force = cfg.force or state is not None or (cfg.resume and checkpoint.log_to_start_afresh(cfg.out))
        return RunLogWriter(cfg.out, force, cfg.to_dict(), env, self.argv, rows)

    # ------------------------------------------------------------------ pieces
    def evaluate(self, epoch: int) -> dict:
        """Loss and accuracy over the whole training and dev sets (each rank its shard, one Allreduce)."""
        comm = self.comm
        comm.set_phase("eval", self.iteration)
        W = self.model.layer_views(self.theta)
        act = self.model.activation_code
        buf = self._evalbuf
        buf[:] = 0.0
        if self.cfg.eval_train:
            buf[0], buf[1] = kernels.evaluate(self.shard.x_train, self.shard.y_train, W, act, self.eval_ws)
        buf[2], buf[3] = kernels.evaluate(self.shard.x_dev, self.shard.y_dev, W, act, self.eval_ws)
        comm.Allreduce(buf)
        reg = self.model.l2_term(self.theta, self.cfg.l2)
        n_tr, n_dv = self.shard.n_train, self.shard.n_dev
        nan = math.nan
        return {
            "train_loss": buf[0] / n_tr + reg if self.cfg.eval_train else nan,
            "train_acc": buf[1] / n_tr if self.cfg.eval_train else nan,
            "dev_loss": buf[2] / n_dv + reg if n_dv else nan,
            "dev_acc": buf[3] / n_dv if n_dv else nan,
        }

    def check_consistency(self) -> bool:
        """Compare a checksum of theta across ranks (one Allreduce); the same call carries the stop
        flag, so that a signal seen by any rank stops every rank at the same iteration. Returns
        True when the run must stop."""
        comm = self.comm
        comm.set_phase("check", self.iteration)
        c = int(kernels.checksum(self.theta))
        buf = self._checkbuf
        buf[0], buf[1], buf[2] = c, -c, int(stop_requested())
        comm.Allreduce(buf, op="max")
        if buf[0] != -buf[1]:
            raise RunError(f"parameters differ between ranks after iteration {self.iteration}; stopping",
                           everywhere=True)
        self.checks += 1
        return bool(buf[2])

    def _batch(self, indices: np.ndarray) -> Batch:
        """This rank's rows of a global batch; a step copies them out of the shard when it needs them."""
        rows = local_rows(indices, self.shard.lo, self.shard.hi)
        return Batch(self.shard.x_train, self.shard.y_train, rows, self.xbuf, self.ybuf)

    def probe_step_memory(self) -> dict:
        """Transient bytes allocated by one step of each kind (tracemalloc), on copies, after training.

        Runs with the uninstrumented communicator so that the probe leaves no trace in the records.
        """
        cfg = self.cfg
        out = {}
        algo = self.algo
        saved = algo.comm
        algo.comm = self.comm.raw()
        try:
            indices = global_batches(self.shard.n_train, cfg.batch, cfg.seed, 0)[0]
            theta = self.theta.copy()
            probes = [("grad", 0)]
            if cfg.algo == "hes":
                probes = [("es", 0)] if cfg.assisted else [("grad", 0), ("es", 1)] if cfg.r > 1 else [("grad", 0)]
            for name, i in probes:
                peak, _ = traced_peak(algo.step, i, theta, self._batch(indices))
                out[f"step_transient_bytes_{name}"] = peak
        finally:
            algo.comm = saved
        return out

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, epoch: int, batch: int) -> None:
        """Rank 0 writes the checkpoint (theta and g are equal on all ranks; a method whose state differs
        between ranks gathers it in ``state()``, called on every rank); every rank learns the outcome."""
        self.comm.set_phase("telemetry", self.iteration)
        algo_state = self.algo.state()

        def write():
            if self.comm.rank != 0:
                return
            rows = self.writer.rows() if self.writer is not None else {}
            state = {"theta": self.theta, **algo_state, "epoch": epoch, "batch": batch,
                     "iteration": self.iteration, "checks": self.checks, "ranks": self.comm.size,
                     "layers": self.model.layers, "activation": self.model.activation,
                     **{f"rows_{k}": v for k, v in rows.items()}}
            try:
                checkpoint.save(self.ckpt_path, state, self.cfg.to_dict())
            except OSError as e:
                kept = "the previous checkpoint is kept" if os.path.exists(self.ckpt_path) else "no checkpoint"
                raise RunError(f"{e}; {kept}") from None

        self.comm.set_phase("telemetry", self.iteration)
        self.comm.agree(write)
        self.ckpt_written = True
        if self.comm.watchdog is not None:
            self.comm.watchdog.hint = self._checkpoint_hint()
        log.info("checkpoint at iteration %d -> %s", self.iteration, self.ckpt_path)

    def _accuracies(self, metrics: dict, sep: str, loss: bool = True) -> str:
        """'loss 0.1234  train 97.50%  dev 96.30%' for the progress lines; without --eval-train (no pass over
        the training set) 'dev loss 0.1250  dev 96.30%'."""
        dev = f"dev {100 * metrics['dev_acc']:.2f}%"
        if self.cfg.eval_train:
            return sep.join([f"loss {metrics['train_loss']:.4f}"] * loss + [f"train {100 * metrics['train_acc']:.2f}%",
                                                                         dev])
        return sep.join([f"dev loss {metrics['dev_loss']:.4f}"] * loss + [dev])

    def _checkpoint_hint(self) -> str:
        """What a stopped run tells the user about its checkpoint."""
        if self.ckpt_written:
            return f"the last checkpoint is {self.ckpt_path}: continue with --resume"
        return "no checkpoint was written (--checkpoint-every N writes them)"

    def _resume_state(self, found: bool) -> dict | None:
        """The checkpoint's state when resuming from one (``found``: every rank sees it), else None."""
        cfg = self.cfg
        if not found:
            if cfg.resume:
                log.info("no checkpoint at %s: starting afresh", self.ckpt_path)
            return None
        state = checkpoint.load(self.ckpt_path, cfg.to_dict())
        if int(state["ranks"]) != self.comm.size:
            raise UsageError(f"{self.ckpt_path} was written by {state['ranks']} ranks, not {self.comm.size}")
        if state.get("layers", self.model.layers) != self.model.layers:
            raise UsageError(f"{self.ckpt_path} holds a {state['layers']} network, not {self.model.layers}")
        if cfg.out and not os.path.exists(cfg.out):
            raise UsageError(f"{self.ckpt_path} continues run log {cfg.out}, which is missing")
        return state

    def _restore(self, state: dict) -> None:
        self.theta[:] = state["theta"]
        self.algo.load_state(state)
        self.iteration = int(state["iteration"])
        self.checks = int(state["checks"])
        self.start = (int(state["epoch"]), int(state["batch"]))
        log.info("resuming from %s at epoch %d, iteration %d", self.ckpt_path, self.start[0] + 1, self.iteration)

    def _diverged(self, rec, epoch: int, flushed: int, done: int, iteration: int, reason: str) -> None:
        """Record the divergence in the run log (complete, ``diverged``) and raise :class:`Diverged` on every
        rank (the figure that diverged is global: every rank is here at the same iteration)."""
        rec.flush(epoch, flushed, done, self.iteration)  # the iterations before the one that diverged

        def write():
            if self.writer is None:
                return
            try:  # complete, with the parameters as they were when it was found
                self.writer.flush(final={"theta": self.theta.copy(), "iterations": self.iteration, "diverged": True,
                                         "diverged_iteration": int(iteration), "diverged_reason": reason})
            except OSError as e:
                raise RunError(f"cannot write the run log {self.cfg.out}: {e}") from None

        self.comm.agree(write)
        raise Diverged(f"{reason} (learning rate too large?); recorded in the run log as diverged"
                       + (f"; the last checkpoint is {self.ckpt_path}" if self.ckpt_written else ""), iteration)

    def _watch_collapse(self, epoch: int, dev_acc: float) -> None:
        """Warn once when the dev accuracy falls COLLAPSE_DROP below its best (the rule of
        :func:`hes_mpi.runlog.collapse_summary`, on the epochs of this process): H-ES can collapse slowly,
        with finite losses, and a run that ends far below its best epoch should not pass unnoticed."""
        if not math.isfinite(dev_acc):
            return
        if not self.dev_history:
            self.dev_first_epoch = epoch
        self.dev_history.append(dev_acc)
        c = collapse_summary(np.array(self.dev_history))  # the summary's own rule
        if c["collapsed"] and not self.collapse_warned:
            self.collapse_warned = True
            if self.comm.rank == 0:  # every rank sees the same accuracy: one warning
                log.warning("dev accuracy fell from %.2f%% (epoch %d) to %.2f%% (epoch %d): the run is collapsing "
                            "(try a smaller --sigma2 or --lr); the summary reports collapsed = true if it ends so",
                            100 * c["best_dev_acc"], self.dev_first_epoch + c["best_dev_epoch"], 100 * dev_acc,
                            epoch + 1)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        cfg, comm = self.cfg, self.comm
        m = self.iters_per_epoch
        rec = Recorder(comm, self.writer, m, cfg.batch, cfg.out, self._fault)
        log.info("training %s on %s: %d ranks, %s network (%d parameters), %d iterations/epoch, %d epochs",
                 cfg.algo + (" (assisted)" if cfg.algo == "hes" and cfg.assisted else ""), self.shard.name,
                 comm.size, self.model.layers, self.model.param_count,
                 m, cfg.epochs)
        self.offsets_start, self.rtt_start = comm.clock_offsets()
        rec.offsets_start = self.offsets_start
        comm.Barrier()
        t_start = comm.wtime()
        metrics: dict = {}
        epoch_times = []
        start_epoch, start_batch = self.start
        epochs_left = Progress(cfg.epochs - start_epoch, comm.wtime)
        t_mark = comm.wtime()
        with setup_objects_frozen(), stop_on_signals():
            for epoch in range(start_epoch, cfg.epochs):
                t_epoch = comm.wtime()
                batches = global_batches(self.shard.n_train, cfg.batch, cfg.seed, epoch)
                flushed = j0 = start_batch if epoch == start_epoch else 0
                for j in range(j0, m):
                    i = self.iteration
                    if self._fault is not None:
                        self._fault.apply(i, self.theta)
                    batch = self._batch(batches[j])
                    t0 = comm.wtime()
                    info = self.algo.step(i, self.theta, batch)
                    step_s = comm.wtime() - t0
                    if diverged(info):
                        self._diverged(rec, epoch, flushed, j, i, f"loss or gradient is not finite at iteration {i}")
                    rec.record(j, i, info, step_s, self.algo.work_bytes(info.kind, batch.n), batch.n)
                    self.iteration += 1
                    stop = False
                    if cfg.check_every and self.iteration % cfg.check_every == 0:
                        stop = self.check_consistency()
                    due = cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0
                    if (due or stop) and j + 1 < m:
                        rec.flush(epoch, flushed, j + 1, self.iteration)
                        flushed = j + 1
                        self.save_checkpoint(epoch, j + 1)
                        if stop:
                            raise Stopped(self.iteration)
                    # a stop seen at the epoch's last iteration: the epoch ends first (evaluation, log), and
                    # the check at its end, which sees the same signal, checkpoints and stops
                epoch_s = comm.wtime() - t_epoch
                epoch_times.append(epoch_s)
                t_eval = comm.wtime()
                metrics = self.evaluate(epoch)
                eval_s = comm.wtime() - t_eval
                if not math.isfinite(metrics["dev_loss"] if self.shard.n_dev else metrics["train_loss"]):
                    self._diverged(rec, epoch, flushed, m, self.iteration - 1,
                                   f"loss is not finite after epoch {epoch + 1}")
                wall = comm.wtime() - t_start
                rec.flush(epoch, flushed, m, self.iteration, {"epoch": epoch + 1, "iteration": self.iteration, **metrics,
                                                     "epoch_s": epoch_s, "eval_s": eval_s, "wall_s": wall})
                epochs_left.done(comm.wtime() - t_mark)  # the whole epoch: training, evaluation, the log's flush
                t_mark = comm.wtime()
                log.info("epoch %*d/%d  %s  %.2f s (+%.2f s eval)%s", len(str(cfg.epochs)), epoch + 1, cfg.epochs,
                         self._accuracies(metrics, "  "), epoch_s, eval_s,
                         f", ETA {duration(epochs_left.eta())}" if epoch + 1 < cfg.epochs else "")
                self._watch_collapse(epoch, metrics["dev_acc"])
                stop = self.check_consistency() and epoch + 1 < cfg.epochs
                if cfg.checkpoint_every or stop:
                    self.save_checkpoint(epoch + 1, 0)
                if stop:
                    raise Stopped(self.iteration)
        if not metrics:  # resumed after the last epoch: nothing left to train
            metrics = self.evaluate(cfg.epochs - 1)
        self.check_consistency()
        wall = comm.wtime() - t_start
        checksum = int(kernels.checksum(self.theta))
        comm.set_phase("telemetry", self.iteration)
        offsets_end, rtt_end = comm.clock_offsets()
        memory = self.probe_step_memory()
        transient = np.zeros(4, dtype=np.int64)
        transient[0] = memory.get("step_transient_bytes_grad", 0)
        transient[1] = memory.get("step_transient_bytes_es", 0)
        transient[2] = held_bytes(self.algo)  # the method's state, the noise table included
        transient[3] = held_bytes(self.algo, Perturbations)
        comm.Allreduce(transient, op="max")
        recs, rec_ranks = rec.gather_records(comm.drain())

        def final_write():
            if self.writer is None:
                return
            self.writer.add_records(recs, rec_ranks)
            self.writer.set_clock(self.offsets_start, self.rtt_start, offsets_end, rtt_end, comm.wtick(),
                                  comm.wtime_is_global())
            try:
                self.writer.flush(final={"theta": self.theta.copy(), "iterations": self.iteration, "wall_s": wall,
                                         "theta_checksum": checksum, "theta_consistent": True,
                                         "consistency_checks": self.checks,
                                         "step_transient_bytes_grad": int(transient[0]),
                                         "step_transient_bytes_es": int(transient[1]),
                                         "state_bytes": int(transient[2]), "state_bytes_noise": int(transient[3])})
            except OSError as e:
                raise RunError(f"cannot write the run log {cfg.out}: {e}") from None

        comm.agree(final_write)
        summary = {"algo": cfg.algo, "ranks": comm.size, "epochs": cfg.epochs, "iterations": self.iteration,
                   **metrics, "wall_s": wall, "median_epoch_s": float(np.median(epoch_times)) if epoch_times else 0.0,
                   "theta_checksum": checksum}
        log.info("done: %s%s, %d ranks, %d epochs (%d iterations): %s, wall %.1f s, median epoch %.2f s%s", cfg.algo,
                 " (assisted)" if cfg.algo == "hes" and cfg.assisted else "", comm.size, cfg.epochs, self.iteration,
                 self._accuracies(metrics, ", ", loss=False), wall, summary["median_epoch_s"],
                 f" -> {cfg.out}" if cfg.out else "")
        return summary


def diverged(info) -> bool:
    """A step whose global figures (the same on every rank, so every rank stops together) are not finite:
    the gradient norm of a gradient step, the winning cost of an ES step. A local SGD step's figures are
    its rank's own: it is judged at the next average, by the averaged parameters."""
    if info.kind == StepKind.LOCAL:
        return False
    return not (math.isfinite(info.grad_norm) or info.kind not in GRADIENT_KINDS) or (
        info.kind in ES_KINDS and not math.isfinite(info.es_cost))


def train(cfg: RunConfig, comm, argv=None) -> dict:
    start = time.time()
    trainer = Trainer(cfg, comm, argv)
    out = trainer.run()
    out["process_s"] = time.time() - start
    return out


__all__ = ["Stopped", "Trainer", "train"]
