import numpy as np
import pytest

from flops_fit.analysis.isoflop import fit_isoflop
from flops_fit.analysis.table import chinchilla_table, human, to_latex, to_markdown
from synth import isoflop_sweep


def test_table_from_isoflop_fit():
    n, d, l, c = isoflop_sweep()
    fit = fit_isoflop(n, d, l, c)
    table = chinchilla_table(fit, [1e20, 1e21, 1e22])
    assert list(table["compute_budget"]) == [1e20, 1e21, 1e22]
    assert np.all(np.diff(table["optimal_params"]) > 0)
    assert table["tokens_per_param"].iloc[0] == pytest.approx(
        table["optimal_tokens"].iloc[0] / table["optimal_params"].iloc[0]
    )
    assert (table["optimal_params_lo"] < table["optimal_params"]).all()
    md = to_markdown(table)
    assert md.splitlines()[0].startswith("| FLOPs") and md.count("\n") == 4
    tex = to_latex(table)
    assert r"\toprule" in tex and tex.count(r"\\") >= 4


def test_table_errors():
    with pytest.raises(ValueError, match="budgets"):
        chinchilla_table(object(), [])
    with pytest.raises(TypeError, match="optimal"):
        chinchilla_table(object(), [1e20])


def test_human_units():
    assert human(1.234e9) == "1.23B"
    assert human(7e12) == "7T"
    assert human(512) == "512"
