"""``hes-mpi evaluate``: the loss and accuracy of finished runs' final parameters on a split of their data
(the test set by default), read once per dataset for all the run logs that share it."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..data import load_shard, load_test_split
from ..errors import UsageError
from ..model import MLP, parse_hidden
from ..runlog import RunLog


def evaluate(paths, split: str = "test", data_dir=None) -> dict:
    """``{"split", "runs": [{runlog, split, examples, accuracy, loss}, ...], "accuracy_mean", "accuracy_std"}``."""

    def read(data: str, ddir, dev_size: int):
        if split == "test":
            return load_test_split(data, ddir, dev_size)
        shard = load_shard(data, 0, 1, ddir, dev_size)
        return shard.x_dev, shard.y_dev

    rows, splits = [], {}  # seeds of one configuration share their data: read it once
    for path in paths:
        with RunLog(path) as rl:
            cfg, theta, complete = rl.config, rl.theta(), rl.complete
        if theta is None or not complete:
            raise UsageError(f"{path}: the run did not finish (no final parameters)")
        key = (cfg["data"], data_dir or cfg.get("data_dir"), cfg.get("dev_size", 10000))
        if key not in splits:
            splits[key] = read(*key)
        X, y = splits[key]
        model = _network(X.shape[1], cfg, theta.size)
        if model is None:
            raise UsageError(f"{path}: parameters do not fit a {X.shape[1]}-{cfg['hidden']}-? network")
        ws = kernels.Workspace(model.hidden, model.n_out, kernels.EVAL_BLOCK)
        loss, correct = kernels.evaluate(X, y, model.layer_views(theta.astype(np.float32)), model.activation_code, ws)
        rows.append({"runlog": str(path), "split": split, "examples": int(y.size),
                     "accuracy": correct / y.size, "loss": loss / y.size + model.l2_term(theta, cfg["l2"])})
    acc = np.array([r["accuracy"] for r in rows])
    return {"split": split, "runs": rows, "accuracy_mean": float(acc.mean()),
            "accuracy_std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0}


def _network(n_in: int, cfg: dict, n_params: int) -> MLP | None:
    """The network of a run's config whose parameter count is ``n_params`` (its output width solved for),
    or None when no output width fits."""
    hidden = parse_hidden(cfg["hidden"])
    inner = MLP(n_in, hidden, 1)
    fixed = inner.param_count - (hidden[-1] + 1)  # every layer but the output layer
    n_out, rest = divmod(n_params - fixed, hidden[-1] + 1)
    if rest or n_out < 1:
        return None
    return MLP(n_in, hidden, n_out, cfg.get("activation", "sigmoid"), cfg.get("init", "normal"))


def format_text(result: dict) -> str:
    lines = [f"{r['runlog']}: {result['split']} accuracy {100 * r['accuracy']:.2f}% ({r['examples']} examples), "
             f"loss {r['loss']:.4f}" for r in result["runs"]]
    if len(result["runs"]) > 1:
        lines.append(f"mean {100 * result['accuracy_mean']:.2f}% ± {100 * result['accuracy_std']:.2f} over "
                     f"{len(result['runs'])} runs")
    return "\n".join(lines)
