"""Fuzzing and properties: readers never crash on arbitrary input; fits do not depend on row order or copies.

Readers (results tables, plan files, planner configs) get arbitrary bytes, arbitrary JSON and mutated valid
files. Each either returns a valid object or raises one of the documented errors (ValueError, TypeError,
FileNotFoundError) with a message; anything else (KeyError, AttributeError, a NumPy traceback) fails.

Properties of the fits on a clean synthetic sweep (``synth.isoflop_sweep``): shuffling the rows leaves every
deterministic fit unchanged, and duplicated rows move Approach 3's compute-optimal N by less than its own
bootstrap interval. Hypothesis runs derandomised (a fixed seed) with bounded examples, so the file is
reproducible and takes well under a minute.
"""

from __future__ import annotations

import json
import linecache
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import flops_fit
from flops_fit.analysis import fit_envelope, fit_isoflop, fit_parametric, fit_power_law
from flops_fit.core.runs import NUMERIC_COLUMNS, REQUIRED_COLUMNS, STATUSES, load_runs, validate_runs
from flops_fit.plan.planner import SweepPlanner
from flops_fit.plan.sweep import SweepPlan
from synth import isoflop_sweep

#: The errors a reader may raise on bad input (each with a message).
READER_ERRORS = (ValueError, TypeError, FileNotFoundError)
PACKAGE_DIR = Path(flops_fit.__file__).resolve().parent


def fuzz(examples: int) -> settings:
    """Bounded, derandomised Hypothesis settings (the suite shares 2 busy cores)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(autouse=True)
def quiet():
    """Readers log a warning per skipped line and fits warn per flagged budget; none of that is under test."""
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def expect_reader_error(exc: BaseException) -> None:
    """``exc`` is a documented error type, raised on purpose by flops-fit (a ``raise`` statement in the
    package, not a TypeError from deep inside pandas or a failed comparison), with a message."""
    assert isinstance(exc, READER_ERRORS), f"unhandled {type(exc).__name__}: {exc}"
    assert str(exc).strip(), f"{type(exc).__name__} without a message"
    event(f"rejected: {type(exc).__name__}")
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    assert tb is not None
    where = Path(tb.tb_frame.f_code.co_filename)
    line = linecache.getline(str(where), tb.tb_lineno).strip()
    assert PACKAGE_DIR in where.parents and line.startswith("raise"), (
        f"{type(exc).__name__}({exc}) escaped from {where}:{tb.tb_lineno} ({line!r}) instead of a "
        "deliberate error naming the problem"
    )


# --------------------------------------------------------------------------------------------------
# strategies


def json_values(max_leaves: int = 10) -> st.SearchStrategy:
    """Arbitrary JSON values (finite floats: the ledger writes NaN as null)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=6)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=max_leaves,
    )


NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.sampled_from(["1e18", "abc", "", "nan"]),
    json_values(4),
)
STATUS = st.sampled_from([*STATUSES, "Completed", "running", ""]) | json_values(3)
CURVES = st.lists(st.lists(NUMBERS, max_size=3), max_size=3) | json_values(4)

RUN_ROWS = st.fixed_dictionaries(
    {
        "experiment_id": json_values(3),
        "compute_budget": NUMBERS,
        "num_params": NUMBERS,
        "num_tokens": NUMBERS,
        "final_loss": NUMBERS,
        "status": STATUS,
    },
    optional={
        "curve": CURVES,
        "actual_flops": NUMBERS,
        "size_value": json_values(3),
        "error": json_values(3),
    },
)


def assert_runs_table(df: pd.DataFrame) -> None:
    """A table ``load_runs`` returned follows the schema (and re-validates to itself)."""
    assert isinstance(df, pd.DataFrame)
    assert all(c in df.columns for c in REQUIRED_COLUMNS)
    for col in NUMERIC_COLUMNS:
        if col in df.columns:
            assert df[col].dtype == np.float64, col
    assert set(df["status"]) <= set(STATUSES)
    assert all(isinstance(v, str) for v in df["experiment_id"])
    if "curve" in df.columns:
        for curve in df["curve"]:
            assert curve is None or all(len(p) == 2 for p in curve)
    pd.testing.assert_frame_equal(validate_runs(df), df)


def write_table(path: Path, rows: list[dict]) -> bool:
    """Write ``rows`` in the format of ``path``'s suffix; False when pandas itself cannot write them."""
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        try:
            frame = pd.DataFrame.from_records(rows)
            if path.suffix == ".csv":
                frame.to_csv(path, index=False)
            else:
                frame.to_parquet(path)
        except Exception:  # e.g. pyarrow cannot store mixed-type columns: nothing to read back
            return False
    return True


def read_or_error(path: Path, **kwargs) -> None:
    try:
        df = load_runs(path, **kwargs)
    except Exception as exc:
        expect_reader_error(exc)
    else:
        event("accepted")
        assert_runs_table(df)


# --------------------------------------------------------------------------------------------------
# results files


SUFFIXES = st.sampled_from([".json", ".jsonl", ".csv", ".parquet"])


@fuzz(300)
@given(content=st.binary(max_size=300), suffix=SUFFIXES)
def test_load_runs_survives_arbitrary_bytes(scratch, content, suffix):
    path = scratch / f"bytes{suffix}"
    path.write_bytes(content)
    read_or_error(path)


@fuzz(300)
@given(rows=st.lists(RUN_ROWS, max_size=5), suffix=SUFFIXES)
def test_load_runs_survives_arbitrary_rows(scratch, rows, suffix):
    path = scratch / f"rows{suffix}"
    if write_table(path, rows):
        read_or_error(path)


@fuzz(150)
@given(data=json_values(12), suffix=st.sampled_from([".json", ".jsonl"]))
def test_load_runs_survives_arbitrary_json(scratch, data, suffix):
    path = scratch / f"any{suffix}"
    if suffix == ".jsonl" and isinstance(data, list):
        path.write_text("\n".join(json.dumps(v) for v in data))
    else:
        path.write_text(json.dumps(data))
    read_or_error(path)


CANONICAL = st.sampled_from([*REQUIRED_COLUMNS, "curve", "error"]) | st.text(max_size=8)
THEIRS = st.sampled_from(["Model Size", "Training FLOP", "loss"]) | st.text(max_size=8)


@fuzz(100)
@given(columns=st.dictionaries(CANONICAL, THEIRS, max_size=4), usual=st.booleans())
def test_load_runs_survives_arbitrary_column_mappings(scratch, columns, usual):
    if usual:  # start from the mapping that fits the file, then let the drawn entries override it
        columns = {
            "num_params": "Model Size",
            "compute_budget": "Training FLOP",
            "final_loss": "loss",
            **columns,
        }
    path = scratch / "mapped.csv"
    pd.DataFrame({"Model Size": [1e8, 2e8], "Training FLOP": [1e18, 2e18], "loss": [3.0, 2.9]}).to_csv(
        path, index=False
    )
    read_or_error(path, columns=columns)


def test_load_runs_of_a_missing_file_names_it(scratch):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        load_runs(scratch / "nowhere.csv")


# --------------------------------------------------------------------------------------------------
# plan files


#: A valid plan file's content, the seed of the mutations.
GOOD_PLAN = SweepPlanner(1e15, 1e16, 2, 3, batch_size=1, lr_rule=1e-3).plan().to_dict()
EXPERIMENT_FIELDS = list(GOOD_PLAN["experiments"][0])
PLAN_FIELDS = ["version", "flops", "param_count", "model", "config", "expected_optimum", "experiments"]
MODEL_SPECS = st.fixed_dictionaries(
    {"model_cls": json_values(3), "size_param": json_values(3)},
    optional={
        "model_kwargs": json_values(4),
        "size_values": json_values(4),
        "size_multiple": json_values(2),
        "param_count": json_values(2),
    },
)


@st.composite
def mutated_plans(draw) -> dict:
    """A valid plan with 1-4 fields replaced, removed or added (top level, an experiment, the model)."""
    out = json.loads(json.dumps(GOOD_PLAN))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["set", "drop", "experiment", "drop_experiment_field", "model"]))
        experiments = out.get("experiments")
        first = experiments[0] if isinstance(experiments, list) and experiments else None
        if where == "set":
            out[draw(st.sampled_from([*PLAN_FIELDS, "extra"]))] = draw(json_values())
        elif where == "drop":
            out.pop(draw(st.sampled_from(PLAN_FIELDS)), None)
        elif where == "experiment" and isinstance(first, dict):
            first[draw(st.sampled_from([*EXPERIMENT_FIELDS, "extra"]))] = draw(
                st.sampled_from(["../escape", "/abs", "a/b", "..", "ok-id"]) | NUMBERS
            )
        elif where == "drop_experiment_field" and isinstance(first, dict):
            first.pop(draw(st.sampled_from(EXPERIMENT_FIELDS)), None)
        elif where == "model":
            out["model"] = draw(MODEL_SPECS | json_values(4))
    return out


def assert_usable_plan(plan: SweepPlan, scratch: Path) -> None:
    """Everything a loaded plan offers works, and it saves and loads back to itself."""
    plan.summary()
    plan.to_frame()
    assert not math.isnan(plan.total_flops)
    assert plan.compute_budgets == tuple(sorted(plan.compute_budgets))
    again = SweepPlan.load(plan.save(scratch / "again.json"))
    assert again == plan


def load_plan_or_error(path: Path, scratch: Path) -> None:
    try:
        plan = SweepPlan.load(path)
    except Exception as exc:
        expect_reader_error(exc)
    else:
        event("accepted")
        assert_usable_plan(plan, scratch)


@fuzz(150)
@given(content=st.binary(max_size=300))
def test_plan_load_survives_arbitrary_bytes(scratch, content):
    path = scratch / "bytes_plan.json"
    path.write_bytes(content)
    load_plan_or_error(path, scratch)


@fuzz(300)
@given(data=st.data())
def test_plan_load_survives_arbitrary_and_mutated_json(scratch, data):
    value = data.draw(json_values(15) | mutated_plans(), label="plan")
    path = scratch / "plan.json"
    path.write_text(json.dumps(value))
    load_plan_or_error(path, scratch)


def test_plan_load_names_what_is_wrong(scratch):
    """A few hand-made breakages, each with the field it concerns in the message."""
    good_plan = GOOD_PLAN
    first = good_plan["experiments"][0]
    cases = {
        "version": {**good_plan, "version": 2},
        "experiments": {**good_plan, "experiments": {"a": 1}},
        "param_count": {k: v for k, v in good_plan.items() if k != "param_count"},
        "num_params": {**good_plan, "experiments": [{**first, "num_params": "many"}]},
        "experiment_id": {**good_plan, "experiments": [{**first, "experiment_id": "../../x"}]},
        "expected_optimum": {**good_plan, "expected_optimum": [[1.0]]},
    }
    for needle, value in cases.items():
        path = scratch / "broken.json"
        path.write_text(json.dumps(value))
        with pytest.raises(ValueError, match=needle):
            SweepPlan.load(path)


# --------------------------------------------------------------------------------------------------
# planner configs

#: Model specs that are safe to resolve while fuzzing (an importable class, a missing module, junk):
#: ``from_config`` imports the class a config names, so arbitrary strings must never reach it.
SAFE_MODELS = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "model_cls": st.sampled_from(["torch.nn:Linear", "no_such_module_flops_fit_fuzz:Net", "x", ""]),
            "size_param": st.sampled_from(["in_features", "out_features", "width", "1x"]),
        },
        optional={"model_kwargs": st.sampled_from([{}, {"out_features": 4}, {"bias": "yes"}, []])},
    ),
    st.integers(),
    st.text(max_size=4),
)
JUNK = st.one_of(
    st.floats(),
    st.integers(-3, 12),
    st.sampled_from([0.0, -1.0, [2.0, 4.0], (0.5, 2.0), "6nd", "measured", "callable:f"]),
    json_values(4),
)
#: Mostly plausible values per key (so some configs plan), each mixed with junk.
PLAUSIBLE = {
    "min_flops": st.sampled_from([1e12, 1e15, 1e17]),
    "max_flops": st.sampled_from([1e15, 1e17, 1e18]),
    "num_compute_budgets": st.integers(1, 5),
    "num_model_sizes": st.integers(2, 6),
    "model": SAFE_MODELS,
    "flops": st.sampled_from(["6nd", "chinchilla"]),
    "tokens_per_param": st.floats(1.0, 100.0),
    "size_span": st.sampled_from([2.0, 8.0, [0.25, 4.0]]),
    "dataset_tokens": st.none() | st.floats(1e6, 1e12),
    "lr_rule": st.sampled_from([None, 1e-3, {"base_lr": 1e-3, "exponent": 0.3}]),
    "batch_size": st.integers(1, 64),
    "tokens_per_sample": st.none() | st.integers(1, 512),
    "data_id": st.none() | st.text(max_size=6),
    "train_config": st.none() | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    "prior": st.none(),
    "seed": st.integers(0, 5),
    "budgets": st.none() | st.lists(st.sampled_from([1e15, 3e15, 1e16]), min_size=1, max_size=3),
}


@st.composite
def planner_configs(draw) -> dict:
    """The four required keys (each left out now and then) and any of the others, plausible or junk."""
    required = ["min_flops", "max_flops", "num_compute_budgets", "num_model_sizes"]
    keys = [k for k in required if draw(st.integers(0, 9)) != 9]
    keys += draw(
        st.lists(st.sampled_from([*SweepPlanner.CONFIG_KEYS, "unknown_key"]), max_size=4, unique=True)
    )
    config = {}
    for key in dict.fromkeys(keys):
        junk = SAFE_MODELS if key == "model" else JUNK
        config[key] = draw(junk if draw(st.integers(0, 3)) == 3 else PLAUSIBLE.get(key, junk))
    return config


@fuzz(300)
@given(config=planner_configs() | json_values(6))
def test_from_config_survives_arbitrary_mappings(config):
    try:
        planner = SweepPlanner.from_config(config)
        plan = planner.plan()
    except ImportError as exc:  # a model class path that does not import: the documented error for it
        assert "no_such_module_flops_fit_fuzz" in str(exc)
    except Exception as exc:
        expect_reader_error(exc)
    else:
        event("planned")
        assert len(plan) >= 3 and all(e.num_tokens >= 1 and e.num_params >= 1 for e in plan)


# --------------------------------------------------------------------------------------------------
# properties of the fits

#: A 32-start grid (2 values per coordinate): the order properties need the same optimum twice, not the
#: best of Hoffmann et al.'s 4,500 starts.
SMALL_GRID = {"e": (0.0, 1.0), "a": (4.0, 8.0), "b": (4.0, 8.0), "alpha": (0.2, 0.6), "beta": (0.2, 0.6)}
#: Budgets (FLOPs) at which N_opt(C) is compared: the largest observed and 100x beyond.
CHECK_BUDGETS = np.array([3e19, 3e21])


@pytest.fixture(scope="module")
def sweep() -> tuple[np.ndarray, ...]:
    return isoflop_sweep()


def law_values(fit) -> np.ndarray:
    """Every number of the three power laws of an Approach 1/2 fit."""
    laws = (fit.n_opt_fit, fit.d_opt_fit, fit.l_opt_fit)
    return np.array([v for f in laws for v in (f.k, f.a, f.offset, f.r_squared)])


@fuzz(15)
@given(perm=st.permutations(range(54)), seed=st.integers(0, 3))
def test_isoflop_is_invariant_to_row_order(perm, seed):
    n, d, l, c = isoflop_sweep(seed=seed)
    p = np.asarray(perm)
    base, shuffled = fit_isoflop(n, d, l, c), fit_isoflop(n[p], d[p], l[p], c[p])
    np.testing.assert_allclose(law_values(shuffled), law_values(base), rtol=1e-9)
    cols = ["compute_budget", "optimal_params", "optimal_tokens", "optimal_loss"]
    np.testing.assert_allclose(shuffled.minima[cols].to_numpy(), base.minima[cols].to_numpy(), rtol=1e-9)


@fuzz(30)
@given(data=st.data(), offset=st.booleans(), size=st.integers(4, 12))
def test_power_law_is_invariant_to_row_order(data, offset, size):
    """A pure power law is a closed-form regression: equal to 1e-9. The offset law is a nonlinear
    least-squares fit that stops at scipy's xtol (1e-8): its curve agrees to 1e-7, its parameters (offset
    and k trade off against each other) to 1e-5."""
    x = np.geomspace(1e17, 1e21, size)
    noise = data.draw(st.lists(st.floats(-0.05, 0.05), min_size=size, max_size=size), label="noise")
    y = (1.8 + 40.0 * x**-0.1 if offset else 3e-3 * x**0.5) * np.exp(noise)
    p = np.asarray(data.draw(st.permutations(range(size)), label="perm"))
    base, shuffled = fit_power_law(x, y, offset=offset), fit_power_law(x[p], y[p], offset=offset)
    rel = 1e-5 if offset else 1e-9
    for name in ("k", "a", "offset"):
        assert getattr(shuffled, name) == pytest.approx(getattr(base, name), rel=rel, abs=1e-12), name
    assert shuffled.r_squared == pytest.approx(base.r_squared, abs=1e-9)
    np.testing.assert_allclose(shuffled.predict(x), base.predict(x), rtol=1e-7 if offset else 1e-9)


@fuzz(5)
@given(perm=st.permutations(range(54)))
def test_parametric_is_invariant_to_row_order(sweep, perm):
    """Equal to optimiser precision: summing the same terms in another order changes the objective in the
    last bits, and L-BFGS stops where the objective stops improving (relative 1e-14), which fixes the
    parameters only to about sqrt(1e-14) = 1e-7 along the flat valley of the Chinchilla loss."""
    n, d, l, _ = sweep
    p = np.asarray(perm)
    base = fit_parametric(n, d, l, init_grid=SMALL_GRID)
    shuffled = fit_parametric(n[p], d[p], l[p], init_grid=SMALL_GRID)
    for name in ("E", "A", "B", "alpha", "beta", "objective"):
        assert getattr(shuffled, name) == pytest.approx(getattr(base, name), rel=1e-6), name
    np.testing.assert_allclose(
        shuffled.optimal(CHECK_BUDGETS)["optimal_params"],
        base.optimal(CHECK_BUDGETS)["optimal_params"],
        rtol=1e-6,
    )


def envelope_runs(seed: int) -> pd.DataFrame:
    """8 sizes trained to 200 N tokens with curves of the synthetic law (small multiplicative noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(np.geomspace(2e7, 2e9, 8)):
        tokens = np.geomspace(n, 200 * n, 40)
        loss = (1.69 + 406.4 / n**0.34 + 410.7 / tokens**0.28) * np.exp(rng.normal(0, 0.002, tokens.size))
        rows.append(
            {
                "experiment_id": f"r{i}",
                "compute_budget": 6 * n * tokens[-1],
                "num_params": n,
                "num_tokens": tokens[-1],
                "final_loss": loss[-1],
                "status": "completed",
                "curve": np.column_stack([tokens, loss]).tolist(),
            }
        )
    return pd.DataFrame(rows)


@fuzz(10)
@given(perm=st.permutations(range(8)), seed=st.integers(0, 3))
def test_envelope_is_invariant_to_row_order(perm, seed):
    runs = envelope_runs(seed)
    base, shuffled = fit_envelope(runs), fit_envelope(runs.iloc[list(perm)])
    np.testing.assert_allclose(law_values(shuffled), law_values(base), rtol=1e-9)


# Bootstrap intervals: resamples draw rows by position, so each fit sorts its rows canonically first and
# the same seed gives the same intervals whatever order the rows came in.


def ci_values(fit) -> np.ndarray:
    laws = (fit.n_opt_fit, fit.d_opt_fit, fit.l_opt_fit)
    return np.array([v for f in laws for name in ("a_ci", "k_ci") for v in (getattr(f, name) or (np.nan,))])


@fuzz(5)
@given(perm=st.permutations(range(54)))
def test_isoflop_bootstrap_intervals_are_invariant_to_row_order(perm):
    n, d, l, c = isoflop_sweep(seed=1)
    p = np.asarray(perm)
    base = fit_isoflop(n, d, l, c, bootstrap=40, seed=3)
    shuffled = fit_isoflop(n[p], d[p], l[p], c[p], bootstrap=40, seed=3)
    assert np.isfinite(ci_values(base)).any()
    np.testing.assert_allclose(ci_values(shuffled), ci_values(base), rtol=1e-9, equal_nan=True)


@fuzz(10)
@given(data=st.data(), size=st.integers(4, 12))
def test_power_law_bootstrap_intervals_are_invariant_to_row_order(data, size):
    x = np.geomspace(1e17, 1e21, size)
    noise = data.draw(st.lists(st.floats(-0.05, 0.05), min_size=size, max_size=size), label="noise")
    y = 3e-3 * x**0.5 * np.exp(noise)
    p = np.asarray(data.draw(st.permutations(range(size)), label="perm"))
    base, shuffled = (
        fit_power_law(x, y, bootstrap=60, seed=1),
        fit_power_law(x[p], y[p], bootstrap=60, seed=1),
    )
    assert shuffled.a_ci == pytest.approx(base.a_ci, rel=1e-9) and shuffled.k_ci == pytest.approx(
        base.k_ci, rel=1e-9
    )


@fuzz(3)
@given(perm=st.permutations(range(54)))
def test_parametric_bootstrap_intervals_are_invariant_to_row_order(sweep, perm):
    n, d, l, _ = sweep
    p = np.asarray(perm)
    base = fit_parametric(n, d, l, init_grid=SMALL_GRID, bootstrap=20, seed=2)
    shuffled = fit_parametric(n[p], d[p], l[p], init_grid=SMALL_GRID, bootstrap=20, seed=2)
    for name in ("E", "A", "B", "alpha", "beta", "a"):
        np.testing.assert_allclose(shuffled.ci[name], base.ci[name], rtol=1e-5, err_msg=name)


@fuzz(5)
@given(perm=st.permutations(range(8)), seed=st.integers(0, 3))
def test_envelope_bootstrap_intervals_are_invariant_to_row_order(perm, seed):
    runs = envelope_runs(seed)
    base = fit_envelope(runs, bootstrap=30, seed=4)
    shuffled = fit_envelope(runs.iloc[list(perm)], bootstrap=30, seed=4)
    assert np.isfinite(ci_values(base)).any()
    np.testing.assert_allclose(ci_values(shuffled), ci_values(base), rtol=1e-9, equal_nan=True)


# Duplicated rows. A results file can hold the same run twice (a ledger merged with a copy of itself, a
# retried run written twice). With the default exclude=True the outlier detector flags every exact repeat
# of an earlier row as "duplicate", so the fit sees the original runs only: it is unchanged, and the copies
# are listed in `excluded`. With exclude=False the copies stay in: duplicating every row scales every
# Huber term by 2, which leaves the minimiser where it was; duplicating some rows re-weights them, the same
# kind of perturbation a bootstrap resample makes, so N_opt(C) must move by less than the bootstrap interval.


@pytest.fixture(scope="module")
def reference(sweep):
    n, d, l, _ = sweep
    return fit_parametric(n, d, l, init_grid=SMALL_GRID, exclude=False, bootstrap=100, seed=0)


def n_opt(fit) -> np.ndarray:
    return np.asarray(fit.optimal(CHECK_BUDGETS)["optimal_params"])


@fuzz(5)
@given(copies=st.lists(st.integers(0, 53), min_size=1, max_size=54))
def test_duplicates_are_excluded_by_default_and_change_nothing(sweep, copies):
    n, d, l, c = sweep
    idx = np.concatenate([np.arange(n.size), np.asarray(copies)])
    base = fit_parametric(n, d, l, C=c, init_grid=SMALL_GRID)
    dup = fit_parametric(n[idx], d[idx], l[idx], C=c[idx], init_grid=SMALL_GRID)
    assert (dup.E, dup.A, dup.B, dup.alpha, dup.beta) == (base.E, base.A, base.B, base.alpha, base.beta)
    assert dup.n_points == n.size
    assert (dup.excluded["outlier_reason"] == "duplicate").sum() == len(copies)


def test_duplicating_every_row_keeps_the_optimum(sweep, reference):
    n, d, l, _ = sweep
    twice = fit_parametric(*(np.tile(v, 2) for v in (n, d, l)), init_grid=SMALL_GRID, exclude=False)
    assert twice.n_points == 2 * n.size
    np.testing.assert_allclose(n_opt(twice), n_opt(reference), rtol=1e-6)


@fuzz(6)
@given(copies=st.lists(st.integers(0, 53), min_size=1, max_size=27, unique=True))
def test_duplicating_some_rows_moves_n_opt_less_than_the_bootstrap_interval(sweep, reference, copies):
    n, d, l, _ = sweep
    idx = np.concatenate([np.arange(n.size), np.asarray(copies)])
    dup = fit_parametric(n[idx], d[idx], l[idx], init_grid=SMALL_GRID, exclude=False)
    lo, hi = reference.optimal(CHECK_BUDGETS)["optimal_params_ci"]
    shift = np.abs(n_opt(dup) - n_opt(reference))
    assert np.all(shift < hi - lo), f"N_opt moved by {shift} with CI width {hi - lo}"


# --------------------------------------------------------------------------------------------------
# saved results: mutated scaling_laws.json / result.json through `flops-fit report`

#: What a mutation puts in place of a value: wrong types, nulls, huge and non-finite numbers, strings.
REPLACEMENTS = (
    None, "x", "", "1e20", True, 0, -1, 0.5, 10**30, 1e308, -1e308, float("nan"), float("inf"),
    [], {}, [1, 2], [[1, 2], [3]], {"a": 1}, "\x1b]52;c;aGk=\x07",
)  # fmt: skip
MUTATED_FILES = ("scaling_laws.json", "result.json")
REPORT_CASES = 300


def _json_paths(node, prefix=()):
    """The path (keys and indices) of every value inside ``node``."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield (*prefix, key)
        yield from _json_paths(child, (*prefix, key))


def mutate_json(data, rng) -> list[str]:
    """Apply 1 to 3 random mutations to ``data`` in place (delete an entry, replace a value, lengthen or
    shorten a list); return what was done."""
    done = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        paths = list(_json_paths(data))
        if not paths:
            break
        path = rng.choice(paths)
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        key, kind = path[-1], rng.choice(("delete", "replace", "replace", "length"))
        if kind == "length" and isinstance(parent[key], list):
            if parent[key] and rng.random() < 0.5:
                parent[key].pop()
            else:
                parent[key].append(rng.choice(REPLACEMENTS))
        elif kind == "delete":
            del parent[key]
        else:
            parent[key] = rng.choice(REPLACEMENTS)
        done.append(f"{kind} {'/'.join(map(str, path))}")
    return done


@pytest.fixture(scope="module")
def saved_result(tmp_path_factory) -> Path:
    """A mock sweep, analysed and saved with a back-test: the folder holds real laws and notes."""
    from flops_fit.app.cli import main
    from flops_fit.report.result import Result

    out = tmp_path_factory.mktemp("saved") / "sweep"
    plan = ["plan", "--out", str(out), "--min-flops", "1e18", "--max-flops", "1e21", "--num-budgets", "4"]
    assert main([*plan, "--sizes", "5"]) == 0
    assert main(["train", str(out), "--mode", "mock", "--no-progress"]) == 0
    assert main(["analyze", str(out), "--approach", "all"]) == 0
    Result.load(out).with_backtest().save(out, plots=False)
    return out


@pytest.fixture
def fast_figures(monkeypatch):
    """Figures are built (their data checked by matplotlib) but not rasterised: most of a report's time."""
    from matplotlib.figure import Figure

    def savefig(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG\r\n\x1a\n")
        else:
            Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n")

    monkeypatch.setattr(Figure, "savefig", savefig)


@pytest.mark.parametrize(
    "cases", [pytest.param(40, id="40"), pytest.param(REPORT_CASES, marks=pytest.mark.slow)]
)
def test_report_of_mutated_laws_and_notes_exits_cleanly(saved_result, tmp_path, capsys, fast_figures, cases):
    """Seeded mutations (300 in the slow variant) of a real ``scaling_laws.json`` or ``result.json``:
    ``flops-fit report`` writes a report (status 0) or exits with status 2 and a message naming the file;
    nothing else escapes. Before the files were checked on load, 26 of 300 such cases raised a traceback."""
    import random
    import shutil

    from flops_fit.app.cli import main

    originals = {name: json.loads((saved_result / name).read_text()) for name in MUTATED_FILES}
    outcomes = {0: 0, 2: 0}
    for seed in range(cases):
        rng = random.Random(seed)
        name = MUTATED_FILES[seed % 2]
        folder = tmp_path / "case"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(saved_result, folder)
        data = json.loads(json.dumps(originals[name]))
        done = mutate_json(data, rng)
        (folder / name).write_text(json.dumps(data))
        try:
            status = main(["report", str(folder), "--no-backtest"])
        except Exception as exc:
            raise AssertionError(f"seed {seed}, {name}: {done}: {type(exc).__name__}: {exc}") from exc
        err = capsys.readouterr().err
        assert status in (0, 2), (seed, name, done, status)
        if status == 2:
            assert "error:" in err and ("scaling_laws.json" in err or "result.json" in err), (seed, done, err)
        outcomes[status] += 1
    assert outcomes[0] and outcomes[2]  # both outcomes occur: the mutations reach past the checks
