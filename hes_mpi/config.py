"""The run configuration: fields, defaults and validation with one-line errors.

Defaults reproduce the poster's baseline: a 784-300-10 MLP with a sigmoid hidden layer, softmax and
cross-entropy, L2 regularisation, weights from a standard normal, zero biases, learning rate 5 and a
global minibatch of 1000 examples split across the ranks, 30 epochs. ``--hidden 1024,1024``,
``--activation`` and ``--init`` make other networks (:mod:`hes_mpi.model`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from .errors import UsageError
from .model import ACTIVATIONS, INITS, parse_hidden

ALGOS = ("bgd", "hes", "reuse", "localsgd")
#: Methods whose gradient steps may be compressed (``--compress``).
COMPRESSIBLE = ("bgd", "hes", "reuse")
SIGMA_SCALES = ("relative", "absolute")
#: ``--perturb``: every parameter, the output layer, or ``lowrank:R`` (every layer by a rank-R product).
PERTURB = ("all", "output", "lowrank:R")
RECOMBINE = ("best", "weighted")
DISTS = ("normal", "rademacher")
#: ``--noise``: the perturbation sources, :data:`hes_mpi.noise.SOURCES` (named here too, so that the CLI starts
#: without importing Numba; tests/test_noise.py keeps the two equal).
NOISES = ("table", "philox", "counter")
#: ``--es-rows-sample``: how ``--es-rows F`` picks its rows: a uniform sample keyed by (seed, iteration, rank),
#: or the first rows in shard order (``head``: what ``--es-rows`` ran before the sample, biased to low indices).
ES_ROWS_SAMPLES = ("random", "head")

#: The poster's plain H-ES (``train --plain``): every parameter perturbed with normal noise, raw costs,
#: the single best candidate, nothing carried or adapted.
PLAIN = {"perturb": "all", "baseline": False, "antithetic": False, "recombine": "best", "carry": False,
         "adapt_sigma": False, "fallback": False, "dist": "normal", "es_rows": 1.0, "es_step": 1.0}


#: Options that never change what a run computes or records, only where and how it runs: a finished run
#: log is the same run whatever they were (sweeps reuse it), and tables do not tell runs apart by them.
NOT_RESULT = frozenset({"out", "force", "data_dir", "threads", "check_every", "checkpoint", "checkpoint_every",
                        "resume", "collective_timeout", "stall_factor"})
#: Options that may differ between an interrupted run and its resumption from a checkpoint (the final
#: parameters do not depend on them; --epochs extends the run).
MAY_CHANGE_ON_RESUME = NOT_RESULT | {"epochs", "eval_train", "sync_barrier"}
#: Options BGD does not read.
HES_ONLY = frozenset({"K", "r", "sigma2", "sigma_scale", "assisted", "noise", "es_rows_sample", *PLAIN})
#: Options that only some training methods read, and which of them each method reads.
METHOD_OPTIONS = HES_ONLY | {"compress"}
READS = {"bgd": frozenset({"compress"}), "hes": METHOD_OPTIONS, "reuse": frozenset({"r", "es_step", "compress"}),
         "localsgd": frozenset({"r"})}
#: Values of options that run logs older than those options ran with: the poster's plain algorithm, Philox
#: noise (logs before the noise table; a ``--plain`` run today draws from ``--noise``, the table by default) and
#: ``--es-rows``'s first rows; every other missing option had today's default.
LEGACY = {**PLAIN, "noise": "philox", "es_rows_sample": "head"}


def result_options(config: dict) -> dict:
    """The options of a run (a ``RunConfig.to_dict()`` or a run log's config) that decide its result:
    everything but :data:`NOT_RESULT` and the method options the run's method does not read (:data:`READS`),
    and, read from old logs, missing options filled in as those logs ran (:data:`LEGACY`, else the defaults);
    ``es_rows_sample`` only when ``es_rows`` < 1 (all the rows are all the rows, however picked)."""
    defaults = RunConfig().to_dict()
    full = {k: config.get(k, LEGACY.get(k, defaults[k])) for k in defaults}
    skip = NOT_RESULT | (METHOD_OPTIONS - READS.get(full["algo"], METHOD_OPTIONS))
    skip |= {"es_rows_sample"} if full["es_rows"] >= 1.0 else set()
    return {k: v for k, v in full.items() if k not in skip}


@dataclass
class RunConfig:
    algo: str = "bgd"
    K: int = 8
    r: int = 2
    sigma2: float = 0.5
    sigma_scale: str = "relative"
    assisted: bool = False
    lr: float = 5.0
    batch: int = 1000
    epochs: int = 30
    l2: float = 1e-4
    hidden: int | str = 300  # one width (an int), or a comma list for several hidden layers ("1024,1024")
    activation: str = "sigmoid"
    init: str = "normal"
    seed: int = 0
    data: str = "mnist"
    data_dir: str | None = None
    dev_size: int = 10000
    out: str | None = None
    force: bool = False
    check_every: int = 10
    threads: int = 0
    eval_train: bool = True
    sync_barrier: bool = False
    emulate_net: str | None = None
    checkpoint_every: int = 0
    checkpoint: str | None = None
    resume: bool = False
    noise: str = "table"
    collective_timeout: float | None = None  # seconds; None: $HES_MPI_COLLECTIVE_TIMEOUT or 120; 0: no watchdog
    stall_factor: float = 50.0  # warn about a call that takes this many times its kind's median (and >= 5 s); 0: off
    # H-ES methods (see hes_mpi.algorithms.hes); PLAIN gives the poster's algorithm.
    perturb: str = "output"
    baseline: bool = True
    antithetic: bool = False
    recombine: str = "best"
    carry: bool = False
    adapt_sigma: bool = False
    fallback: bool = False
    dist: str = "normal"
    es_rows: float = 1.0
    es_rows_sample: str = "random"  # how --es-rows picks its rows (ES_ROWS_SAMPLES); logs without it: "head"
    es_step: float = 0.0  # 0: auto (see effective_es_step)
    # Gradient compression of the gradient steps (hes_mpi.algorithms.compress): none, fp16, topk:F, powersgd:R.
    compress: str = "none"

    def validate(self) -> RunConfig:
        """Check every field that does not depend on the data or the rank count."""
        if self.algo not in ALGOS:
            raise UsageError(f"--algo must be one of {', '.join(ALGOS)}, not {self.algo!r}")
        if self.K < 1:
            raise UsageError(f"--K must be at least 1, got {self.K}")
        if self.r < 1:
            raise UsageError(f"--r must be at least 1, got {self.r}")
        if not (self.sigma2 >= 0 and math.isfinite(self.sigma2)):
            raise UsageError(f"--sigma2 must be a finite number >= 0, got {self.sigma2}")
        if self.sigma_scale not in SIGMA_SCALES:
            raise UsageError(f"--sigma-scale must be one of {', '.join(SIGMA_SCALES)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a finite number > 0, got {self.lr}")
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise UsageError(f"--l2 must be a finite number >= 0, got {self.l2}")
        if self.batch < 1:
            raise UsageError(f"--batch must be at least 1, got {self.batch}")
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}")
        try:
            widths = parse_hidden(self.hidden)
        except ValueError:
            raise UsageError(f"--hidden must be a width or a comma list of widths >= 1 (e.g. 300 or 1024,1024), "
                             f"got {self.hidden!r}") from None
        # One canonical form, so that run logs and sweeps compare: an int for one hidden layer (as every
        # run log before deeper networks has it), "1024,1024" for several.
        self.hidden = widths[0] if len(widths) == 1 else ",".join(str(w) for w in widths)
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"--activation must be one of {', '.join(ACTIVATIONS)}, not {self.activation!r}")
        if self.init not in INITS:
            raise UsageError(f"--init must be one of {', '.join(INITS)}, not {self.init!r}")
        if not (0 <= self.seed < 2**63):
            raise UsageError(f"--seed must be in [0, 2**63), got {self.seed}")
        if self.dev_size < 0:
            raise UsageError(f"--dev-size must be >= 0, got {self.dev_size}")
        if self.check_every < 0:
            raise UsageError(f"--check-every must be >= 0, got {self.check_every}")
        if self.emulate_net is not None:
            from .collectives import parse_network

            parse_network(self.emulate_net)
        if self.noise not in NOISES:
            raise UsageError(f"--noise must be one of {', '.join(NOISES)}, not {self.noise!r}")
        perturb_rank(self.perturb)
        for name, allowed in (("recombine", RECOMBINE), ("dist", DISTS), ("es_rows_sample", ES_ROWS_SAMPLES)):
            if getattr(self, name) not in allowed:
                flag = name.replace("_", "-")
                raise UsageError(f"--{flag} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if not (0.0 < self.es_rows <= 1.0):
            raise UsageError(f"--es-rows must be a fraction in (0, 1], got {self.es_rows}")
        if not (0.0 <= self.es_step <= 1.0):
            raise UsageError(f"--es-step must be a fraction in (0, 1], or 0 for auto; got {self.es_step}")
        if self.antithetic and self.K % 2:
            raise UsageError(f"--antithetic needs an even --K (pairs of +z and -z), got {self.K}")
        if self.adapt_sigma and not self.baseline:
            raise UsageError("--adapt-sigma needs --baseline (success means beating the unperturbed candidate)")
        if self.fallback and not self.baseline:
            raise UsageError("--fallback needs --baseline (it keeps the unperturbed candidate when none beats it)")
        if self.checkpoint_every < 0:
            raise UsageError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.collective_timeout is not None and not (self.collective_timeout >= 0
                                                        and math.isfinite(self.collective_timeout)):
            raise UsageError(f"--collective-timeout must be a number of seconds >= 0 (0: off), got "
                             f"{self.collective_timeout}")
        if not (self.stall_factor >= 0 and math.isfinite(self.stall_factor)):
            raise UsageError(f"--stall-factor must be a number >= 0 (0: off), got {self.stall_factor}")
        if self.threads < 0:
            raise UsageError(f"--threads must be >= 0, got {self.threads}")
        parse_compress(self.compress)
        if self.compress != "none" and self.algo not in COMPRESSIBLE:
            raise UsageError(f"--compress works on gradient steps ({', '.join(COMPRESSIBLE)}); --algo {self.algo} "
                             "exchanges parameters, not gradients")
        return self

    def validate_for(self, ranks: int, n_train: int) -> None:
        """Checks that need the rank count and the training-set size."""
        if ranks > n_train:
            raise UsageError(f"{ranks} ranks but only {n_train} training examples: use fewer ranks")
        if self.batch < ranks:
            raise UsageError(f"--batch {self.batch} is smaller than the rank count {ranks}")
        shard = n_train // ranks
        if math.ceil(self.batch / ranks) > shard:
            raise UsageError(
                f"--batch {self.batch} over {ranks} ranks needs {math.ceil(self.batch / ranks)} examples "
                f"per rank, but a shard holds only {shard}"
            )

    @property
    def es_every_iteration(self) -> bool:
        return self.algo == "hes" and self.assisted

    def is_grad_step(self, iteration: int) -> bool:
        """True when iteration ``iteration`` computes a gradient (and, but for local SGD, exchanges it)."""
        if self.algo in ("bgd", "localsgd") or (self.algo == "hes" and self.assisted):
            return True
        return iteration % self.r == 0

    def is_es_step(self, iteration: int) -> bool:
        """True when iteration ``iteration`` selects among K perturbed candidates."""
        if self.algo != "hes":
            return False
        return self.assisted or iteration % self.r != 0

    @property
    def effective_es_step(self) -> float:
        """--es-step, or with 0 (auto) the measured best: 1 for r <= 2, 0.7 for r >= 3 (docs/results.md)."""
        if self.es_step > 0:
            return self.es_step
        return 1.0 if self.r <= 2 else 0.7

    @property
    def is_plain(self) -> bool:
        """True when every H-ES method option is the poster's."""
        return all(getattr(self, k) == v for k, v in PLAIN.items())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def perturb_rank(text: str) -> int:
    """``--perturb``: 0 for ``all`` and ``output``, R for ``lowrank:R`` (a whole number >= 1)."""
    if text in ("all", "output"):
        return 0
    name, _, arg = str(text).partition(":")
    if name == "lowrank" and arg.isdigit() and int(arg) >= 1:
        return int(arg)
    raise UsageError(f"--perturb must be all, output or lowrank:R (a rank R >= 1, e.g. lowrank:1), not {text!r}")


def parse_compress(text: str) -> tuple[str, float]:
    """``--compress`` as (name, parameter): ('none', 0), ('fp16', 0), ('topk', F) with 0 < F < 1, or
    ('powersgd', R) with R a whole number >= 1."""
    name, _, arg = str(text).partition(":")
    if name in ("none", "fp16") and not arg:
        return name, 0.0
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    if name == "topk" and 0.0 < value < 1.0:
        return name, value
    if name == "powersgd" and value >= 1 and value == int(value):
        return name, int(value)
    raise UsageError(f"--compress {text!r}: one of none, fp16, topk:F (a fraction, e.g. topk:0.01) or powersgd:R "
                     "(a rank, e.g. powersgd:4)")


def compress_label(text: str) -> str:
    """'fp16', 'top-k 1%', 'PowerSGD rank 4' ('' for none)."""
    name, v = parse_compress(text)
    return {"none": "", "fp16": "fp16", "topk": f"top-k {100 * v:g}%", "powersgd": f"PowerSGD rank {v:g}"}[name]


# ---------------------------------------------------------------------------------------- labels
def method_label(config: dict) -> str:
    """'plain', or the H-ES method options that differ from the poster's, e.g. 'output layer, baseline'
    (run logs older than these options ran the poster's plain algorithm)."""
    words = []
    for k, plain in PLAIN.items():
        v = config.get(k, plain)
        if v == plain:
            continue
        if k == "perturb":
            r = perturb_rank(v)
            words.append("output layer" if v == "output" else f"low-rank {r}" if r else str(v))
        elif k == "recombine":
            words.append(f"{v} recombination")
        elif k == "es_rows":  # a sample of the rows; old logs (and --es-rows-sample head): the first rows
            first = config.get("es_rows_sample", LEGACY["es_rows_sample"]) == "head"
            words.append(f"first {v:g} of rows" if first else f"{v:g} of rows")
        elif k == "es_step":
            words.append(f"ES step {v:g} lr" if v else "ES step auto")
        elif k == "dist":
            words.append(str(v))
        elif v is True:
            words.append(k.replace("_", "-"))
    return ", ".join(words) or "plain"


def run_label(config: dict) -> str:
    """The poster's name of a configuration: 'Reference (BGD)', 'Assisted H-ES (r = 1) [...]' or
    'H-ES, r = 2 [...]', with the H-ES method options in brackets; 'Gradient reuse, r = 2', 'Local SGD,
    H = 2'; a compressed gradient exchange follows, e.g. 'BGD, PowerSGD rank 4'."""
    algo = config["algo"]
    compress = compress_label(config.get("compress", "none")) if algo in COMPRESSIBLE else ""
    if algo == "bgd":
        return f"BGD, {compress}" if compress else "Reference (BGD)"
    if algo == "reuse":
        head = f"Gradient reuse, r = {config['r']}"
        step = config.get("es_step", 0.0)
        head += f", step {step:g} lr" if step else ""
    elif algo == "localsgd":
        head = f"Local SGD, H = {config['r']}"
    else:
        head = "Assisted H-ES (r = 1)" if config.get("assisted") else f"H-ES, r = {config['r']}"
        head += f" [{method_label(config)}]"
    return f"{head}, {compress}" if compress else head


#: Options that :func:`run_label` already shows.
LABELLED = frozenset({"algo", "assisted", "r", "compress", "es_rows_sample", *PLAIN})
