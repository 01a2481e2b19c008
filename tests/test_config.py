"""RunConfig: defaults, validation messages, the gradient / ES schedule."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from hes_mpi.config import RunConfig
from hes_mpi.errors import UsageError


def test_defaults_validate():
    cfg = RunConfig()
    assert cfg.validate() is cfg
    assert (cfg.algo, cfg.lr, cfg.batch, cfg.epochs, cfg.hidden) == ("bgd", 5.0, 1000, 30, 300)


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("K", 0, "--K"),
        ("K", -3, "--K"),
        ("r", 0, "--r"),
        ("sigma2", -0.1, "--sigma2"),
        ("sigma2", math.nan, "--sigma2"),
        ("sigma2", math.inf, "--sigma2"),
        ("lr", 0.0, "--lr"),
        ("lr", -1.0, "--lr"),
        ("lr", math.inf, "--lr"),
        ("lr", math.nan, "--lr"),
        ("batch", 0, "--batch"),
        ("epochs", 0, "--epochs"),
        ("hidden", 0, "--hidden"),
        ("algo", "sgd", "--algo"),
        ("algo", "HES", "--algo"),
        ("sigma_scale", "log", "--sigma-scale"),
        ("l2", -1e-4, "--l2"),
        ("l2", math.nan, "--l2"),
        ("seed", -1, "--seed"),
        ("seed", 2**63, "--seed"),
        ("dev_size", -1, "--dev-size"),
        ("check_every", -1, "--check-every"),
        ("threads", -2, "--threads"),
        ("perturb", "hidden", "--perturb"),
        ("recombine", "mean", "--recombine"),
        ("dist", "cauchy", "--dist"),
        ("es_rows", 0.0, "--es-rows"),
        ("es_rows", 1.5, "--es-rows"),
        ("es_rows", math.nan, "--es-rows"),
        ("compress", "gzip", "--compress 'gzip'"),
        ("compress", "topk", "--compress 'topk'"),
        ("compress", "topk:0", "--compress"),
        ("compress", "topk:1", "--compress"),
        ("compress", "powersgd:0", "--compress"),
        ("compress", "powersgd:2.5", "--compress"),
        ("compress", "fp16:2", "--compress"),
    ],
)
def test_bad_values_raise_usage_error(field, value, words):
    cfg = dataclasses.replace(RunConfig(), **{field: value})
    with pytest.raises(UsageError) as ei:
        cfg.validate()
    msg = str(ei.value)
    assert words in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "field,value",
    [("K", 1), ("r", 1), ("sigma2", 0.0), ("lr", 1e-9), ("batch", 1), ("epochs", 1), ("hidden", 1),
     ("algo", "hes"), ("l2", 0.0), ("seed", 2**63 - 1), ("dev_size", 0), ("check_every", 0),
     ("sigma_scale", "absolute"), ("algo", "reuse"), ("algo", "localsgd"), ("compress", "fp16"),
     ("compress", "topk:0.001"), ("compress", "powersgd:1")],
)
def test_boundary_values_are_accepted(field, value):
    dataclasses.replace(RunConfig(), **{field: value}).validate()


def test_usage_error_exit_code():
    assert UsageError.exit_code == 2


# ---------------------------------------------------------------------------------------- validate_for
def test_validate_for_ok():
    RunConfig(batch=1000).validate_for(4, 50000)
    RunConfig(batch=4).validate_for(4, 4)  # one example per rank per batch, one per shard
    RunConfig(batch=10).validate_for(1, 10)


def test_validate_for_batch_smaller_than_ranks():
    with pytest.raises(UsageError, match="smaller than the rank count 8"):
        RunConfig(batch=4).validate_for(8, 50000)


def test_validate_for_more_ranks_than_examples():
    with pytest.raises(UsageError, match="16 ranks but only 10 training examples"):
        RunConfig(batch=100).validate_for(16, 10)


def test_validate_for_batch_per_rank_larger_than_shard():
    # 3 ranks over 10 examples: shards of 3; batch 10 needs ceil(10/3) = 4 per rank
    with pytest.raises(UsageError, match="needs 4 examples per rank, but a shard holds only 3"):
        RunConfig(batch=10).validate_for(3, 10)
    with pytest.raises(UsageError, match="shard holds only"):
        RunConfig(batch=1001).validate_for(1, 1000)
    RunConfig(batch=9).validate_for(3, 10)


# ---------------------------------------------------------------------------------------- schedule
def schedule(cfg, n=7):
    return [(cfg.is_grad_step(i), cfg.is_es_step(i)) for i in range(n)]


def test_schedule_bgd():
    assert schedule(RunConfig(algo="bgd")) == [(True, False)] * 7
    assert schedule(RunConfig(algo="bgd", r=3)) == [(True, False)] * 7
    assert RunConfig(algo="bgd").es_every_iteration is False


def test_schedule_bgd_ignores_assisted():
    assert schedule(RunConfig(algo="bgd", assisted=True)) == [(True, False)] * 7
    assert RunConfig(algo="bgd", assisted=True).es_every_iteration is False


def test_schedule_hes_r1_is_all_gradient():
    assert schedule(RunConfig(algo="hes", r=1)) == [(True, False)] * 7


def test_schedule_hes_r2_alternates():
    G, E = (True, False), (False, True)
    assert schedule(RunConfig(algo="hes", r=2)) == [G, E, G, E, G, E, G]


def test_schedule_hes_r3():
    G, E = (True, False), (False, True)
    assert schedule(RunConfig(algo="hes", r=3)) == [G, E, E, G, E, E, G]


@pytest.mark.parametrize("r", [1, 2, 3])
def test_schedule_hes_assisted_does_both_every_iteration(r):
    cfg = RunConfig(algo="hes", r=r, assisted=True)
    assert schedule(cfg) == [(True, True)] * 7
    assert cfg.es_every_iteration is True


@pytest.mark.parametrize("r", [1, 2, 3, 5])
def test_schedule_hes_every_iteration_does_something(r):
    cfg = RunConfig(algo="hes", r=r)
    for i in range(20):
        assert cfg.is_grad_step(i) != cfg.is_es_step(i)
    assert sum(cfg.is_grad_step(i) for i in range(10 * r)) == 10


# ---------------------------------------------------------------------------------------- round trip
def test_dict_and_json_round_trip():
    cfg = RunConfig(algo="hes", K=4, r=3, sigma2=0.25, assisted=True, data="synthetic:100:2")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg
    # unknown keys (e.g. from a newer run log) are ignored
    assert RunConfig.from_dict({**cfg.to_dict(), "not_a_field": 1}) == cfg


def test_antithetic_needs_even_k_and_adapt_sigma_needs_baseline():
    with pytest.raises(UsageError, match="even"):
        RunConfig(algo="hes", K=3, antithetic=True).validate()
    RunConfig(algo="hes", K=4, antithetic=True).validate()
    with pytest.raises(UsageError, match="--baseline"):
        RunConfig(algo="hes", adapt_sigma=True, baseline=False).validate()
    RunConfig(algo="hes", adapt_sigma=True, baseline=True).validate()


def test_plain_is_the_poster_algorithm():
    from hes_mpi.config import PLAIN

    cfg = RunConfig(**PLAIN)
    assert cfg.is_plain
    assert not dataclasses.replace(cfg, carry=True).is_plain
    assert PLAIN["perturb"] == "all" and PLAIN["recombine"] == "best" and PLAIN["es_rows"] == 1.0
    assert PLAIN["es_step"] == 1.0 and cfg.effective_es_step == 1.0


def test_es_step_auto_is_one_for_r2_and_damped_beyond():
    assert RunConfig(algo="hes", r=2).effective_es_step == 1.0
    assert RunConfig(algo="hes", r=3).effective_es_step == 0.7
    assert RunConfig(algo="hes", r=3, es_step=0.5).effective_es_step == 0.5
    with pytest.raises(UsageError, match="--es-step"):
        RunConfig(algo="hes", es_step=1.5).validate()


def test_localsgd_refuses_a_gradient_compression():
    with pytest.raises(UsageError, match="exchanges parameters, not gradients"):
        RunConfig(algo="localsgd", compress="fp16").validate()


def test_schedules_of_the_baselines():
    reuse = RunConfig(algo="reuse", r=3)
    assert [reuse.is_grad_step(i) for i in range(6)] == [True, False, False, True, False, False]
    assert not any(reuse.is_es_step(i) for i in range(6))
    local = RunConfig(algo="localsgd", r=3)
    assert all(local.is_grad_step(i) for i in range(6)) and not any(local.is_es_step(i) for i in range(6))


def test_result_options_keep_what_each_method_reads():
    from hes_mpi.config import result_options

    bgd = result_options(RunConfig(algo="bgd", compress="fp16", r=7, K=3).to_dict())
    assert bgd["compress"] == "fp16" and "r" not in bgd and "K" not in bgd
    reuse = result_options(RunConfig(algo="reuse", r=3, es_step=0.5, K=3).to_dict())
    assert (reuse["r"], reuse["es_step"]) == (3, 0.5) and "K" not in reuse and "sigma2" not in reuse
    local = result_options(RunConfig(algo="localsgd", r=4).to_dict())
    assert local["r"] == 4 and "compress" not in local and "es_step" not in local
    # logs written before --compress existed read as the exact exchange
    old = RunConfig(algo="hes").to_dict()
    del old["compress"]
    assert result_options(old) == result_options(RunConfig(algo="hes").to_dict())


def test_es_rows_of_old_logs_read_as_the_first_rows_and_stay_apart_from_a_sample():
    """A run log from before --es-rows drew a sample (no ``es_rows_sample``) costed the first rows: it reads as
    ``head``, is labelled so and is grouped apart from a new run with the same --es-rows; without --es-rows (all
    the rows) old and new logs stay one configuration."""
    from hes_mpi.config import result_options, run_label
    from hes_mpi.post.tables import Run, group_runs, label_runs

    new = RunConfig(algo="hes", es_rows=0.5).validate().to_dict()
    old = {k: v for k, v in new.items() if k != "es_rows_sample"}
    assert result_options(old)["es_rows_sample"] == "head" and result_options(new)["es_rows_sample"] == "random"
    assert result_options(old) == result_options({**new, "es_rows_sample": "head"})  # what reproduces it
    assert run_label(old) == "H-ES, r = 2 [output layer, baseline, first 0.5 of rows, ES step auto]"
    assert run_label(new) == "H-ES, r = 2 [output layer, baseline, 0.5 of rows, ES step auto]"
    runs = label_runs([Run(f"{i}.h5", {"ranks": 2}, c, {}, {}) for i, c in enumerate((old, new))])
    assert len(group_runs(runs)) == 2 and runs[0].label != runs[1].label
    every = RunConfig(algo="hes").to_dict()
    every_old = {k: v for k, v in every.items() if k != "es_rows_sample"}
    assert result_options(every_old) == result_options(every) and "es_rows_sample" not in result_options(every)
    assert run_label(every_old) == run_label(every)
    with pytest.raises(UsageError, match="--es-rows-sample"):
        RunConfig(algo="hes", es_rows_sample="last").validate()


def test_plain_runs_draw_from_the_table_and_logs_from_before_it_read_as_philox():
    """--plain sets the H-ES method options, not --noise: a --plain run draws from the default source, the table.
    Run logs from before the table (no ``noise`` in /config) drew from Philox streams and read so, and a table
    holding both tells them apart."""
    from hes_mpi.cli import build_parser
    from hes_mpi.cli.train import _train_config
    from hes_mpi.config import PLAIN, result_options
    from hes_mpi.post.tables import Run, label_runs

    plain = _train_config(build_parser().parse_args(["train", "--algo", "hes", "--plain"])).validate().to_dict()
    assert "noise" not in PLAIN and plain["noise"] == RunConfig().noise == "table"
    old = {k: v for k, v in plain.items() if k not in {*PLAIN, "noise", "es_rows_sample", "compress"}}
    assert result_options(old)["noise"] == "philox" and result_options(plain)["noise"] == "table"
    assert result_options(old) == result_options({**plain, "noise": "philox"})  # what reproduces it
    runs = label_runs([Run(f"{i}.h5", {"ranks": 2}, c, {}, {}) for i, c in enumerate((old, plain))])
    assert [r.label for r in runs] == ["H-ES, r = 2 [plain], noise philox", "H-ES, r = 2 [plain], noise table"]


@pytest.mark.parametrize(("options", "label"), [
    ({"algo": "bgd"}, "Reference (BGD)"),
    ({"algo": "bgd", "compress": "fp16"}, "BGD, fp16"),
    ({"algo": "bgd", "compress": "topk:0.01"}, "BGD, top-k 1%"),
    ({"algo": "bgd", "compress": "powersgd:4"}, "BGD, PowerSGD rank 4"),
    ({"algo": "reuse", "r": 2}, "Gradient reuse, r = 2"),
    ({"algo": "reuse", "r": 3, "es_step": 0.5}, "Gradient reuse, r = 3, step 0.5 lr"),
    ({"algo": "localsgd", "r": 4}, "Local SGD, H = 4"),
    ({"algo": "hes", "r": 2, "compress": "fp16"}, "H-ES, r = 2 [output layer, baseline, ES step auto], fp16"),
])
def test_labels_of_the_baselines(options, label):
    from hes_mpi.config import run_label

    assert run_label(RunConfig(**options).to_dict()) == label


def test_fallback_needs_baseline():
    with pytest.raises(UsageError, match="--fallback needs --baseline"):
        RunConfig(algo="hes", fallback=True, baseline=False).validate()
    RunConfig(algo="hes", fallback=True).validate()
