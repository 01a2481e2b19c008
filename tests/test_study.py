"""Statistics over seeds and the study tables: confidence intervals and Welch's test against scipy's own
formulas by hand, the Pareto fronts, H-ES paired with its reuse control."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hes_mpi.config import RunConfig
from hes_mpi.post.stats import mean_ci, welch
from hes_mpi.post.study import comparisons, markdown_comparisons, markdown_pareto, pareto_rows
from hes_mpi.post.tables import Run, accuracy_rows, label_runs, markdown_accuracy


def test_mean_ci_is_the_t_interval():
    v = [0.961, 0.958, 0.965, 0.960, 0.957]
    m, lo, hi, n = mean_ci(v)
    s = np.std(v, ddof=1)
    half = 2.7764451051977987 * s / math.sqrt(5)  # t(0.975, 4)
    assert n == 5 and m == pytest.approx(np.mean(v))
    assert (lo, hi) == (pytest.approx(m - half), pytest.approx(m + half))


def test_mean_ci_edge_cases():
    assert mean_ci([0.5])[1:] == (pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True), 1)
    assert mean_ci([0.5, 0.5, 0.5])[1:3] == (0.5, 0.5)
    assert mean_ci([math.nan, 0.4, 0.6])[3] == 2  # a diverged seed (NaN) is left out, and n says so
    assert math.isnan(mean_ci([])[0])


def test_welch_matches_the_formula():
    a, b = np.array([0.963, 0.962, 0.965, 0.961, 0.964]), np.array([0.960, 0.955, 0.962, 0.958, 0.957])
    w = welch(a, b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    from scipy import stats

    assert w["diff"] == pytest.approx(a.mean() - b.mean())
    assert w["p"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (w["low"], w["high"]) == (pytest.approx(w["diff"] - half), pytest.approx(w["diff"] + half))
    assert math.isnan(welch([0.9], [0.8, 0.7])["p"])  # one seed: no test


def run(seed, dev, bytes_, train_s, **options) -> Run:
    return Run(path=f"{seed}.h5", summary={"ranks": 2, "epochs": 1, "train_acc": dev, "dev_acc": dev,
                                             "comm_bytes_sent_per_rank": bytes_},
               config=RunConfig(seed=seed, **options).to_dict(), epochs={"epoch_s": np.array([train_s])},
               iterations={})


def study_runs():
    out = []
    for s, (a, b, c, d) in enumerate([(0.97, 0.962, 0.960, 0.95), (0.971, 0.964, 0.958, 0.951),
                                      (0.969, 0.963, 0.957, 0.949)]):
        out += [run(s, a, 100e6, 10.0, algo="bgd"), run(s, b, 50e6, 12.0, algo="hes", r=2),
                run(s, c, 50e6, 6.0, algo="reuse", r=2), run(s, d, 1e6, 11.0, algo="bgd", compress="powersgd:1")]
    return label_runs(out)


def test_pareto_rows_mark_the_fronts():
    rows = {r["run"]: r for r in pareto_rows(study_runs())}
    assert rows["Reference (BGD)"]["front_bytes"] and rows["Reference (BGD)"]["front_time"]  # the most accurate
    assert rows["BGD, PowerSGD rank 1"]["front_bytes"] and not rows["BGD, PowerSGD rank 1"]["front_time"]
    hes = next(v for k, v in rows.items() if k.startswith("H-ES"))
    assert hes["front_bytes"] and not hes["front_time"]  # beats reuse at equal bytes; slower than reuse and BGD
    assert rows["Gradient reuse, r = 2"]["front_time"] and not rows["Gradient reuse, r = 2"]["front_bytes"]
    assert all(r["seeds"] == 3 for r in rows.values())
    text = markdown_pareto(list(rows.values()))
    assert "| Reference (BGD) | 3 | 97.00% ± " in text


def test_hes_is_compared_with_reuse_at_the_same_r():
    rows = comparisons(study_runs())
    assert len(rows) == 1
    r = rows[0]
    assert r["reuse"] == "Gradient reuse, r = 2" and r["n_a"] == r["n_b"] == 3
    assert r["diff"] == pytest.approx(0.963 - 0.95833333, abs=1e-6)
    assert r["low"] < r["diff"] < r["high"] and 0 < r["p"] < 0.05
    assert "+0.47" in markdown_comparisons(rows)
    # each at its own lr when the table has reuse at one lr only; the same lr when it has several
    alone = label_runs([x for x in study_runs() if x.config["algo"] != "reuse"]
                       + [run(0, 0.9, 1, 1, algo="reuse", r=2, lr=1.0), run(1, 0.91, 1, 1, algo="reuse", r=2, lr=1.0)])
    assert [r["reuse"] for r in comparisons(alone)] == ["Gradient reuse, r = 2, lr 1"]
    both = label_runs(study_runs() + [run(0, 0.9, 1, 1, algo="reuse", r=2, lr=1.0)])
    assert [r["reuse"] for r in comparisons(both)] == ["Gradient reuse, r = 2, lr 5"]
    # another r, or other shared options (here the batch), is not H-ES's control
    assert comparisons(label_runs([x for x in study_runs() if x.config["algo"] != "reuse"]
                                  + [run(0, 0.9, 1, 1, algo="reuse", r=3), run(0, 0.9, 1, 1, algo="reuse", r=2,
                                                                                batch=500)])) == []


def test_accuracy_table_shows_the_ci_half_width_and_n():
    rows = accuracy_rows(study_runs())
    text = markdown_accuracy(rows)
    bgd = rows[0]
    assert bgd["seeds"] == 3 and bgd["dev_acc_ci_low"] < bgd["dev_acc"] < bgd["dev_acc_ci_high"]
    half = 100 * (bgd["dev_acc_ci_high"] - bgd["dev_acc_ci_low"]) / 2
    assert f"| 97.00% ± {half:.2f} |" in text and "95% CI" in text


def curve_run(seed, accs, epoch_s=2.0, **options) -> Run:
    """A run whose dev accuracy after epoch e is accs[e] (each epoch ``epoch_s`` of training)."""
    accs = np.asarray(accs, dtype=float)
    return Run(path=f"{seed}.h5", summary={"ranks": 2, "epochs": accs.size, "iterations": 10, "train_acc": accs[-1],
                                             "dev_acc": accs[-1], "comm_bytes_sent_per_rank": 1e6},
               config=RunConfig(seed=seed, **options).to_dict(),
               epochs={"epoch_s": np.full(accs.size, epoch_s), "dev_acc": accs}, iterations={})


def target_runs():
    bgd = [curve_run(s, [0.90, 0.95, 0.962, 0.970], algo="bgd") for s in range(3)]  # target 0.965: epoch 4
    hes = [curve_run(0, [0.90, 0.966, 0.95, 0.96], 1.0, algo="hes", r=2),  # reaches it at epoch 2, then falls
           curve_run(1, [0.90, 0.93, 0.94, 0.967], 1.0, algo="hes", r=2),
           curve_run(2, [0.90, 0.93, 0.94, 0.95], 1.0, algo="hes", r=2)]  # never
    reuse = [curve_run(s, [0.9, 0.91, 0.92, 0.93], 0.5, algo="reuse", r=2) for s in range(2)]
    return label_runs(bgd + hes + reuse)


def test_time_to_target_is_the_training_time_to_the_first_epoch_at_the_target():
    from hes_mpi.post.tables import group_runs, markdown_savings, savings_rows
    from hes_mpi.post.target import cell, default_target, group_time_to_target, seconds_to

    runs = target_runs()
    assert default_target(group_runs(runs)) == pytest.approx(0.965)  # BGD's final mean minus 0.5 points
    assert default_target(group_runs(runs), 0.9) == 0.9
    assert seconds_to(runs[0].epochs, 0.965) == pytest.approx(8.0)
    assert math.isnan(seconds_to(runs[0].epochs, 0.99))
    hes = group_time_to_target(runs[3:6], 0.965)
    assert hes["target_reached"] == 2 and hes["time_to_target_s"] == pytest.approx((2.0 + 4.0) / 2)
    assert cell(hes, 3) == "3.0 (2.0-4.0; 2 of 3)"
    rows = {r["run"].split(" [")[0]: r for r in savings_rows(runs)}
    assert rows["Reference (BGD)"]["time_to_target_s"] == pytest.approx(8.0)
    assert rows["Gradient reuse, r = 2"]["target_reached"] == 0
    text = markdown_savings(list(rows.values()))
    assert "time to 96.50% (s)" in text and "| never |" in text and "| 3.0 (2.0-4.0; 2 of 3) |" in text
    assert "| 8.0 |" in text


def test_pareto_table_and_figure_carry_the_time_to_target(tmp_path):
    from hes_mpi.post.figures import plot_pareto

    runs = target_runs()
    rows = pareto_rows(runs, target=0.95)
    assert [r["time_to_target_s"] for r in rows] == [pytest.approx(4.0), pytest.approx(4.0), pytest.approx(math.nan,
                                                                                                           nan_ok=True)]
    text = markdown_pareto(rows)
    assert "time to 95.00% (s, median)" in text and "never" in text
    path = plot_pareto(runs, tmp_path / "pareto.png", target=0.95)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.filterwarnings("ignore:Precision loss")  # the two reuse runs are identical
def test_last_epochs_accuracy_is_the_mean_of_the_last_epochs_over_seeds():
    from hes_mpi.post.tables import accuracy_rows, last_epochs_acc, markdown_accuracy

    runs = target_runs()
    assert last_epochs_acc(runs[3], 2) == pytest.approx((0.95 + 0.96) / 2)
    assert math.isnan(last_epochs_acc(runs[3], 5))  # fewer epochs than asked
    rows = {r["run"].split(" [")[0]: r for r in accuracy_rows(runs, last_epochs=2)}
    assert rows["H-ES, r = 2"]["dev_last_acc"] == pytest.approx(np.mean([0.955, 0.9535, 0.945]))
    assert rows["H-ES, r = 2"]["dev_last_acc_ci_low"] < rows["H-ES, r = 2"]["dev_last_acc"]
    assert "dev, mean of the last 2 epochs" in markdown_accuracy(list(rows.values()))
    par = pareto_rows(runs, last_epochs=2)
    assert "dev, last 2 epochs" in markdown_pareto(par) and par[0]["dev_last_acc"] == pytest.approx(0.966)
    assert "last_epochs" not in accuracy_rows(runs)[0]  # only when asked
    # H-ES - reuse on the last-2-epoch means too, as Welch's test on those per-seed values
    from scipy import stats

    (c,) = comparisons(runs, last_epochs=2)
    hes, reuse = [0.955, 0.9535, 0.945], [0.925, 0.925]
    assert c["last_diff"] == pytest.approx(np.mean(hes) - np.mean(reuse))
    assert c["last_p"] == pytest.approx(stats.ttest_ind(hes, reuse, equal_var=False).pvalue)
    assert c["diff"] == pytest.approx(np.mean([0.96, 0.967, 0.95]) - 0.93)  # the final epochs', as before
    text = markdown_comparisons([c])
    assert "last 2 epochs: difference" in text and f"{100 * c['last_diff']:+.2f}" in text
    assert "last_diff" not in comparisons(runs)[0]
