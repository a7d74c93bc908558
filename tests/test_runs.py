import json

import numpy as np
import pandas as pd
import pytest

from flops_fit.core.ledger import append_record, read_records
from flops_fit.core.runs import REQUIRED_COLUMNS, load_runs, runs_from_arrays, validate_runs

ROWS = [
    {
        "experiment_id": "a",
        "compute_budget": 1e18,
        "num_params": 1e7,
        "num_tokens": 1.6e10,
        "final_loss": 3.1,
        "status": "completed",
    },
    {
        "experiment_id": "b",
        "compute_budget": 1e18,
        "num_params": 2e7,
        "num_tokens": 8.3e9,
        "final_loss": 3.0,
        "status": "completed",
        "curve": [[1e9, 4.0], [8.3e9, 3.0]],
    },
    {
        "experiment_id": "c",
        "compute_budget": 1e18,
        "num_params": 4e7,
        "num_tokens": 4.1e9,
        "final_loss": None,
        "status": "diverged",
        "error": "loss nan at step 12",
    },
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_load_runs_every_format(tmp_path, suffix):
    path = tmp_path / f"results{suffix}"
    df = pd.DataFrame(ROWS)
    if suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".jsonl":
        for r in ROWS:
            append_record(path, r)
    elif suffix == ".csv":
        df.drop(columns=["curve"]).to_csv(path, index=False)
    else:
        df.drop(columns=["curve"]).to_parquet(path)
    runs = load_runs(path)
    assert list(runs["experiment_id"]) == ["a", "b", "c"]
    assert runs["status"].tolist() == ["completed", "completed", "diverged"]
    assert np.isnan(runs["final_loss"].iloc[2])
    for col in REQUIRED_COLUMNS:
        assert col in runs


def test_column_mapping_and_derived_tokens(tmp_path, caplog):
    path = tmp_path / "theirs.csv"
    pd.DataFrame({"Model Size": [1e8, 2e8], "Training FLOP": [6e18, 6e18], "loss": [3.0, 2.9]}).to_csv(
        path, index=False
    )
    with caplog.at_level("INFO"):
        runs = load_runs(
            path,
            columns={"num_params": "Model Size", "compute_budget": "Training FLOP", "final_loss": "loss"},
        )
    assert runs["num_tokens"].tolist() == pytest.approx([1e10, 5e9])
    assert "D = C / (6 N)" in caplog.text
    assert (runs["status"] == "completed").all()


def test_bundled_chinchilla_file_loads():
    from importlib.resources import files

    path = files("flops_fit") / "data" / "chinchilla_epoch.csv"
    runs = load_runs(
        path, columns={"num_params": "Model Size", "compute_budget": "Training FLOP", "final_loss": "loss"}
    )
    assert len(runs) == 245


def test_torn_last_line_is_skipped(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    append_record(path, ROWS[0])
    with open(path, "a") as fh:
        fh.write('{"experiment_id": "b", "compute_bu')  # killed mid-write
    assert len(read_records(path)) == 1
    append_record(path, ROWS[1])  # the next writer starts on a fresh line
    assert [r["experiment_id"] for r in read_records(path)] == ["a", "b"]
    assert "torn" in caplog.text


def test_a_byte_order_mark_does_not_hide_the_first_record(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, ROWS[0])
    append_record(path, ROWS[1])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as saved by an editor that adds one
    assert [r["experiment_id"] for r in read_records(path)] == ["a", "b"]


def test_runs_without_a_status_are_completed(tmp_path):
    rows = [dict(r) for r in ROWS]
    del rows[1]["status"]  # e.g. an older results file joined with a ledger
    (tmp_path / "runs.json").write_text(json.dumps(rows))
    runs = load_runs(tmp_path / "runs.json")
    assert list(runs["status"]) == ["completed"] * 2 + [r["status"] for r in ROWS[2:]]


def test_ledger_writes_strict_json(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, {"experiment_id": "x", "final_loss": float("nan"), "v": np.float32(1.5)})
    line = path.read_text().strip()
    assert json.loads(line) == {"experiment_id": "x", "final_loss": None, "v": 1.5}


@pytest.mark.parametrize(
    "frame, match",
    [
        (pd.DataFrame({"num_params": [1.0]}), "missing required column"),
        (pd.DataFrame(ROWS[:1]).assign(num_params="big"), "'num_params' must be numeric"),
        (pd.DataFrame(ROWS[:1]).assign(status="weird"), "unknown value"),
    ],
)
def test_validation_names_the_problem(frame, match):
    with pytest.raises(ValueError, match=match):
        validate_runs(frame)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "nope.csv")
    bad = tmp_path / "r.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        load_runs(bad)
    j = tmp_path / "r.json"
    j.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_runs(j)
    j.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="list of run objects"):
        load_runs(j)
    c = tmp_path / "r.csv"
    pd.DataFrame(ROWS).to_csv(c, index=False)
    with pytest.raises(ValueError, match="does not have"):
        load_runs(c, columns={"num_params": "Model Size"})
    with pytest.raises(ValueError, match="unknown canonical"):
        load_runs(c, columns={"params": "num_params"})
    with pytest.raises(ValueError, match=r"reads column\(s\) \['num_params'\] for more than one"):
        load_runs(c, columns={"num_params": "num_params", "num_tokens": "num_params"})
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_runs(tmp_path)
    with pytest.raises(TypeError, match="path must be a results file path"):
        load_runs(None)
    header = tmp_path / "header.csv"
    header.write_text("num_params,num_tokens,final_loss\n")
    with pytest.raises(ValueError, match=r"header.csv holds no runs \(no rows\)"):
        load_runs(header)


def test_runs_from_arrays_defaults_to_6nd():
    runs = runs_from_arrays([1e8], [2e9], [3.0])
    assert runs["compute_budget"].iloc[0] == pytest.approx(1.2e18)


def test_parquet_curves_come_back_as_pairs(tmp_path):
    df = pd.DataFrame(ROWS[:2])
    df.loc[0, "curve"] = None
    path = tmp_path / "r.parquet"
    df.to_parquet(path)
    runs = load_runs(path)
    assert runs["curve"].iloc[1] == [[1e9, 4.0], [8.3e9, 3.0]]
    assert runs["curve"].iloc[0] is None


def test_bad_curve_is_named():
    frame = pd.DataFrame(ROWS[:1]).assign(curve=[[[1.0, 2.0, 3.0]]])
    with pytest.raises(ValueError, match="run a: 'curve'"):
        validate_runs(frame)
