"""Runs tables built from the real published results in tests/data (see tests/data/SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def olmo_ladder_runs(data_dir: Path) -> pd.DataFrame:
    """The OLMo ladder's 190M-3B runs (0.5-10x Chinchilla tokens) with their C4 loss curves."""
    df = pd.read_csv(data_dir / "olmo_ladder_c4.csv")
    df = df[df["run"].str.contains("xC") & ~df["run"].str.contains("rerun")]
    rows = []
    for run, g in df.groupby("run"):
        g = g.sort_values("tokens")
        rows.append(
            {
                "experiment_id": run,
                "compute_budget": g["training_gflops"].iloc[-1] * 1e9,
                "num_params": g["n_params"].iloc[0],
                "num_tokens": g["tokens"].iloc[-1],
                "final_loss": g["c4_loss"].iloc[-1],
                "status": "completed",
                "curve": g[["tokens", "c4_loss"]].to_numpy().tolist(),
            }
        )
    return pd.DataFrame(rows)
