import dataclasses
import io
import json
import logging
import os
import stat
import sys
import warnings
import xml.etree.ElementTree as ET

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

import flops_fit.report.plots as plotting
from flops_fit.analysis.envelope import fit_envelope
from flops_fit.analysis.isoflop import IsoFLOPFit, fit_isoflop
from flops_fit.analysis.parametric import ParametricFit
from flops_fit.core.runs import load_runs, runs_from_arrays
from flops_fit.report.analyzer import ScalingLawAnalyzer
from flops_fit.report.plots import FIGURES, ScalingVisualizer
from real_data import olmo_ladder_runs
from synth import TRUE, isoflop_sweep

FIT_FIGURES = tuple(f for f in FIGURES if f != "backtest")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _render(fig: Figure, fmt: str = "png") -> bytes:
    """Draw ``fig`` for real (layout, tick labels, text) at a low resolution."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=40)
    return buf.getvalue()


def _with_curves(runs: pd.DataFrame, p=TRUE) -> pd.DataFrame:
    """Add a loss curve L(N, t), t up to the run's tokens, drawn from the true law."""
    curves = []
    for n, d in zip(runs["num_params"], runs["num_tokens"], strict=True):
        t = np.geomspace(d / 50, d, 25)
        curves.append(
            np.column_stack([t, p["E"] + p["A"] / n ** p["alpha"] + p["B"] / t ** p["beta"]]).tolist()
        )
    return runs.assign(curve=curves)


def _parametric(p=TRUE, n_samples=20, seed=0, **changes) -> ParametricFit:
    """A ParametricFit at the true law with jittered bootstrap samples (no optimiser needed)."""
    params = {**p, **changes}
    rng = np.random.default_rng(seed)
    base = np.array([params[k] for k in ("E", "A", "B", "alpha", "beta")])
    samples = base * np.exp(rng.normal(0, 0.01, (n_samples, 5)))
    return ParametricFit(**params, objective=0.0, n_points=54, samples=samples)


@pytest.fixture(scope="module")
def sweep():
    n, d, l, c = isoflop_sweep(noise=0.004, seed=3)
    runs = _with_curves(runs_from_arrays(n, d, l, c))
    fits = {
        "envelope": fit_envelope(runs),
        "isoflop": fit_isoflop(n, d, l, c, bootstrap=30, seed=0),
        "parametric": _parametric(),
    }
    return runs, fits


def _profiles(fig: Figure) -> dict[int, int]:
    """Runs drawn per budget profile (collections with gid ``profile-<k>[-<kind>]``)."""
    counts: dict[int, int] = {}
    for ax in fig.axes:
        for col in ax.collections:
            gid = str(col.get_gid())
            if gid.startswith("profile-"):
                k = int(gid.split("-")[1])
                counts[k] = counts.get(k, 0) + len(col.get_offsets())
    return counts


def _collection(fig: Figure, gid: str) -> PathCollection:
    (col,) = [c for ax in fig.axes for c in ax.collections if c.get_gid() == gid]
    return col


def test_every_figure_draws_with_all_fits(sweep):
    runs, fits = sweep
    rc_before = dict(mpl.rcParams)
    pyplot = sys.modules.get("matplotlib.pyplot")
    open_figures = pyplot.get_fignums() if pyplot else None
    viz = ScalingVisualizer(runs, fits, target_budgets=[1e21])
    assert viz.available_figures() == FIT_FIGURES  # the back-test figure needs a back-test table
    for name in FIT_FIGURES:
        fig = viz.figure(name)
        assert isinstance(fig, Figure)
        assert _render(fig).startswith(PNG_MAGIC)
    # no global matplotlib state changes: rcParams restored, no pyplot figures left open
    assert dict(mpl.rcParams) == rc_before
    if pyplot:
        assert pyplot.get_fignums() == open_figures
    iso = viz.plot_isoflop()
    assert len(_profiles(iso)) == 6  # one profile per budget
    assert iso.axes[0].get_xscale() == "log"
    opt = viz.plot_optimal()
    panels = [ax for ax in opt.axes if ax.get_xlabel()]
    assert [ax.get_xscale() for ax in panels] == ["log"] * 3
    assert [ax.get_yscale() for ax in panels] == ["log", "log", "linear"]
    assert all(any(np.allclose(line.get_xdata(), 1e21) for line in ax.lines) for ax in panels)  # target
    residual_titles = [ax.get_title() for ax in viz.plot_residuals().axes if ax.get_title()]
    assert [t.split("\n")[0] for t in residual_titles] == [
        "Approach 1 (envelope)",
        "Approach 2 (IsoFLOP)",
        "Approach 3 (parametric)",
    ]
    assert all(t.split("\n")[1].endswith("(log loss)") for t in residual_titles)  # one unit, two lines
    assert "ScalingVisualizer(runs=54" in repr(viz)


@pytest.mark.parametrize(
    ("subset", "expected"),
    [
        (("isoflop",), ("isoflop", "optimal", "residuals")),
        (("parametric",), ("optimal", "parametric", "residuals")),
        (("envelope",), ("optimal", "residuals", "envelope")),
        (("envelope", "parametric"), ("optimal", "parametric", "residuals", "envelope")),
    ],
)
def test_figures_follow_the_fits_present(sweep, subset, expected):
    runs, fits = sweep
    viz = ScalingVisualizer(runs, {k: fits[k] for k in subset})
    assert viz.available_figures() == expected
    for name in ("optimal", "residuals"):  # the figures that combine approaches
        assert _render(viz.figure(name)).startswith(PNG_MAGIC)
    for name in set(FIGURES) - set(expected):
        with pytest.raises(ValueError, match="needs"):
            viz.figure(name)


def test_a_single_fit_is_accepted(sweep):
    runs, fits = sweep
    viz = ScalingVisualizer(runs, fits["isoflop"])
    assert list(viz.fits) == ["isoflop"]


def test_envelope_needs_curves_in_the_runs(sweep):
    runs, fits = sweep
    viz = ScalingVisualizer(runs.drop(columns=["curve"]), {"envelope": fits["envelope"]})
    assert "envelope" not in viz.available_figures()
    with pytest.raises(ValueError, match="loss curves"):
        viz.plot_envelope()


def test_curves_read_back_from_parquet_are_drawn(sweep, tmp_path):
    runs, fits = sweep
    path = tmp_path / "runs.parquet"
    runs.to_parquet(path)
    viz = ScalingVisualizer(load_runs(path), {"envelope": fits["envelope"]})
    assert len(viz._curves()) == len(runs)  # Parquet gives arrays of arrays, not lists of pairs


def test_budget_rtol_unlike_the_fit_is_logged(sweep, caplog):
    runs, fits = sweep
    with caplog.at_level(logging.WARNING, logger="flops_fit.report.plots"):
        ScalingVisualizer(runs, fits["isoflop"], budget_rtol=0.2)
    assert "differs from the IsoFLOP fit's 0.05" in caplog.text


def test_save_all_writes_valid_png_and_svg_atomically(sweep, tmp_path, caplog):
    runs, fits = sweep
    viz = ScalingVisualizer(runs, fits["isoflop"])
    with caplog.at_level(logging.INFO, logger="flops_fit.report.plots"):
        paths = viz.save_all(tmp_path / "figs", formats=("png", "svg"), dpi=60)
    names = ("isoflop", "optimal", "residuals")
    assert [p.name for p in paths] == [f"{n}.{f}" for n in names for f in ("png", "svg")]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(
        p.name for p in paths
    )  # no temp files
    umask = os.umask(0)
    os.umask(umask)
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask  # usual permissions, not mkstemp's 0600
        data = p.read_bytes()
        if p.suffix == ".png":
            assert data.startswith(PNG_MAGIC)
        else:
            assert ET.fromstring(data).tag.endswith("svg")
    assert "skipping figure 'envelope'" in caplog.text


def test_a_failed_save_leaves_the_old_file_and_no_temporary(sweep, tmp_path, monkeypatch):
    runs, fits = sweep
    viz = ScalingVisualizer(runs, fits["isoflop"])
    (tmp_path / "isoflop.png").write_bytes(b"old")

    def broken_savefig(self, fname, **kwargs):
        fname.write(b"partial")  # a half-written temporary file
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        viz.save_all(tmp_path, formats="png")
    assert [p.name for p in tmp_path.iterdir()] == ["isoflop.png"]
    assert (tmp_path / "isoflop.png").read_bytes() == b"old"


def test_save_all_rejects_bad_arguments_before_drawing(sweep, tmp_path):
    runs, fits = sweep
    viz = ScalingVisualizer(runs, fits["isoflop"])
    with pytest.raises(ValueError, match="formats"):
        viz.save_all(tmp_path / "a", formats=("png", "nonsense"))
    with pytest.raises(ValueError, match="formats"):
        viz.save_all(tmp_path / "a", formats=())
    with pytest.raises(ValueError, match="dpi"):
        viz.save_all(tmp_path / "a", dpi=0)
    assert not (tmp_path / "a").exists()


def test_budgets_are_grouped_by_bucket_budgets(monkeypatch):
    n, d, l, c = isoflop_sweep(noise=0.003, seed=5)
    c = c * np.where(np.arange(c.size) % 2 == 0, 1.0, 1.03)  # each profile's budgets differ by 3%
    runs = runs_from_arrays(n, d, l, c)
    iso = fit_isoflop(n, d, l, c)
    calls = []
    real = plotting.bucket_budgets

    def spy(compute, rtol):
        calls.append(rtol)
        return real(compute, rtol=rtol)

    monkeypatch.setattr(plotting, "bucket_budgets", spy)
    viz = ScalingVisualizer(runs, iso)
    assert calls == [0.05]
    profiles = _profiles(viz.plot_isoflop())
    assert len(profiles) == 6  # budgets within 5% are one profile ...
    assert sorted(profiles.values()) == [9] * 6
    split = ScalingVisualizer(runs, iso, budget_rtol=0.0)  # ... and split without a tolerance
    assert len(split.budgets) == 12


def _edge_sweep():
    """The synthetic sweep with the last budget's sizes shifted 30x smaller: its minimum is not bracketed."""
    n, _, _, c = isoflop_sweep(noise=0.0)
    last = c == c.max()
    n = n.copy()
    n[last] = n[last] / 30
    d = c / (6 * n)
    p = TRUE
    l = p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]
    return n, d, l, c


def test_flagged_budget_is_drawn_differently_and_annotated():
    n, d, l, c = _edge_sweep()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        iso = fit_isoflop(n, d, l, c)
    assert iso.minima["flags"].iloc[-1] == "edge_large"
    fig = ScalingVisualizer(runs_from_arrays(n, d, l, c), iso).plot_isoflop()
    texts = [
        t.get_text()
        for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
        if leg
        for t in leg.texts
    ]
    assert any("edge: extend to larger models" in t for t in texts)
    assert "flagged, left out of the laws" in fig.axes[0].get_legend().get_title().get_text()
    styles = [line.get_linestyle() for line in fig.axes[0].lines if len(line.get_xdata()) > 2]
    assert styles.count("--") == 1 and styles.count("-") == 5  # the flagged parabola is dashed
    hollow = [
        line
        for line in fig.axes[0].lines
        if line.get_marker() == "o" and line.get_markerfacecolor() == "white"
    ]
    assert len(hollow) == 1
    _render(fig)
    # the optimal-allocation figure shows the flagged minimum hollow too
    assert any(
        "flagged" in t.get_text()
        for t in ScalingVisualizer(runs_from_arrays(n, d, l, c), iso).plot_optimal().legends[0].texts
    )


def test_many_flagged_budgets_are_summarised_by_advice():
    """With more flagged budgets than the legend holds, one entry per advice counts them, and the axes keep
    their size (a legend of every budget once squeezed them to nothing)."""
    n, d, l, c = isoflop_sweep(noise=0.002, seed=4)
    n2, d2, l2, c2 = isoflop_sweep(budgets=np.geomspace(6e19, 6e22, 24), sizes=2, noise=0.002, seed=5)
    n, d, l, c = (np.concatenate(pair) for pair in ((n, n2), (d, d2), (l, l2), (c, c2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        iso = fit_isoflop(n, d, l, c)
    fig = ScalingVisualizer(runs_from_arrays(n, d, l, c), iso).plot_isoflop()
    texts = [t.get_text() for t in fig.axes[0].get_legend().texts]
    assert texts == ["24 budgets: too few sizes"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constrained layout warns when the axes collapse
        _render(fig)


def test_excluded_outlier_is_a_cross():
    n, d, l, c = isoflop_sweep(noise=0.002, seed=2)
    l = l.copy()
    l[13] *= 1.15  # one broken run in the second budget
    iso = fit_isoflop(n, d, l, c)
    assert len(iso.excluded) == 1
    viz = ScalingVisualizer(runs_from_arrays(n, d, l, c), iso)
    assert np.flatnonzero(viz._excluded_mask(iso)).tolist() == [13]
    fig = viz.plot_isoflop()
    cross = _collection(fig, "profile-1-excluded")
    np.testing.assert_allclose(cross.get_offsets(), [[n[13], l[13]]])
    assert cross.get_paths()[0] is not _collection(fig, "profile-1").get_paths()[0]  # a different marker
    assert _profiles(fig)[1] == 9  # the run is still drawn once, as a cross
    assert any(t.get_text() == "excluded outlier" for t in fig.legends[0].texts)
    # a parametric fit's exclusions (reported without the run's own budget) are crosses among its residuals
    par = dataclasses.replace(_parametric(), excluded=iso.excluded.drop(columns=["compute_budget"]))
    both = ScalingVisualizer(runs_from_arrays(n, d, l, c), {"isoflop": iso, "parametric": par})
    assert np.flatnonzero(both._excluded_mask(par)).tolist() == [13]
    residuals = both.plot_residuals()
    assert any(t.get_text() == "excluded outlier" for t in residuals.legends[0].texts)


def test_degenerate_parametric_fit_still_draws(sweep, caplog):
    runs, _ = sweep
    viz = ScalingVisualizer(runs, _parametric(alpha=1e-5))
    with caplog.at_level(logging.WARNING, logger="flops_fit.report.plots"):
        _render(viz.plot_parametric())
        _render(viz.plot_optimal())
    assert "no compute-optimal allocation" in caplog.text


def test_bad_input_is_a_clear_error(sweep):
    runs, fits = sweep
    iso = fits["isoflop"]
    with pytest.raises(TypeError, match="DataFrame"):
        ScalingVisualizer(runs.to_dict(), iso)
    with pytest.raises(ValueError, match="final_loss"):
        ScalingVisualizer(runs.drop(columns=["final_loss"]), iso)
    with pytest.raises(ValueError, match="nothing to plot"):
        ScalingVisualizer(runs.assign(status="failed"), iso)
    with pytest.raises(TypeError, match="fits must be"):
        ScalingVisualizer(runs, [iso])
    with pytest.raises(ValueError, match="empty"):
        ScalingVisualizer(runs, {})
    with pytest.raises(ValueError, match="unknown approach"):
        ScalingVisualizer(runs, {"chinchilla": iso})
    with pytest.raises(TypeError, match=r"fits\['parametric'\] must be a ParametricFit"):
        ScalingVisualizer(runs, {"parametric": iso})
    with pytest.raises(ValueError, match="budget_rtol"):
        ScalingVisualizer(runs, iso, budget_rtol=-0.1)
    with pytest.raises(TypeError, match="budget_rtol"):
        ScalingVisualizer(runs, iso, budget_rtol=True)
    with pytest.raises(ValueError, match="target_budgets"):
        ScalingVisualizer(runs, iso, target_budgets=[1e21, -1])
    with pytest.raises(TypeError, match="target_budgets"):
        ScalingVisualizer(runs, iso, target_budgets="1e21")
    with pytest.raises(ValueError, match="unknown figure"):
        ScalingVisualizer(runs, iso).figure("loss_curves")


def test_from_files_reads_the_analyzer_output(sweep, tmp_path):
    runs, _ = sweep
    results = tmp_path / "results.json"
    results.write_text(runs.drop(columns=["curve"]).to_json(orient="records"))
    analysis = ScalingLawAnalyzer(results, tmp_path / "out", approach="isoflop").analyze()
    viz = ScalingVisualizer.from_files(results, tmp_path / "out" / "scaling_laws.json", target_budgets=1e21)
    assert list(viz.fits) == ["isoflop"]
    assert isinstance(viz.fits["isoflop"], IsoFLOPFit)
    assert viz.fits["isoflop"].a == pytest.approx(analysis.fits["isoflop"].a)
    assert viz.target_budgets == (1e21,)
    assert _render(viz.plot_isoflop(), "svg").lstrip().startswith(b"<?xml")


def test_from_files_with_every_approach_and_errors(sweep, tmp_path):
    runs, fits = sweep
    results = tmp_path / "results.json"
    results.write_text(runs.to_json(orient="records"))
    n, d, l, c = (runs[k].to_numpy() for k in ("num_params", "num_tokens", "final_loss", "compute_budget"))
    fits = {**fits, "isoflop": fit_isoflop(n, d, l, c, budget_rtol=0.08)}
    laws = tmp_path / "scaling_laws.json"
    laws.write_text(json.dumps({"fits": {name: fit.to_dict() for name, fit in fits.items()}}))
    viz = ScalingVisualizer.from_files(results, laws)
    assert viz.available_figures() == FIT_FIGURES
    assert viz.budget_rtol == 0.08  # the IsoFLOP fit's own bucketing
    assert _render(viz.plot_envelope()).startswith(PNG_MAGIC)
    with pytest.raises(FileNotFoundError, match="analyze"):
        ScalingVisualizer.from_files(results, tmp_path / "missing.json")
    laws.write_text(json.dumps({"version": 1}))
    with pytest.raises(ValueError, match="'fits'"):
        ScalingVisualizer.from_files(results, laws)


def test_real_isoflop_profiles_porian(data_dir):
    """Porian et al. (2024), one configuration: 12 budgets, 121 runs."""
    df = pd.read_csv(data_dir / "porian2024_isoflop_points.csv")
    s = df[
        (df.source_file == "summary_df")
        & (df.dataset == "rw")
        & (df.hparams == "tuned")
        & (df.warmup == "short")
        & (df.decay == "const")
        & (df.val == "val")
    ]
    iso = fit_isoflop(s.n, s.t, s.loss, s.flops)
    viz = ScalingVisualizer(runs_from_arrays(s.n, s.t, s.loss, s.flops), iso, target_budgets=[1e21])
    fig = viz.plot_isoflop()
    assert len(_profiles(fig)) == 12
    # the far tails (losses up to ~9) are cut off so the minima stay readable; they are marked on the top edge
    assert fig.axes[0].get_ylim()[1] < s.loss.max()
    assert any(t.get_text() == "loss off scale" for t in fig.legends[0].texts)
    _render(fig)
    _render(viz.plot_optimal())


def test_real_envelope_olmo(data_dir):
    """The OLMo ladder: C4 loss curves of 190M-3B models."""
    runs = olmo_ladder_runs(data_dir)
    viz = ScalingVisualizer(runs, fit_envelope(runs, exclude=False))
    fig = viz.plot_envelope()
    ax = fig.axes[0]
    assert len(ax.lines) == len(runs) + 2  # every curve, the envelope and its L_opt law
    assert ax.get_xscale() == "log"
    _render(fig)


def test_residual_panels_share_the_log_unit(sweep):
    """Approach 2's residuals are log L - log parabola like the others, so the RMS values compare."""
    runs, fits = sweep
    fig = ScalingVisualizer(runs, fits).plot_residuals()
    iso_ax = next(ax for ax in fig.axes if ax.get_title().startswith("Approach 2"))
    resid = np.concatenate([c.get_offsets()[:, 1] for c in iso_ax.collections])
    assert np.abs(resid).max() < 0.05  # 0.4% noise on losses of 2-5 nats: log residuals, not nats
    rms = float(iso_ax.get_title().split("RMS ")[1].split()[0])
    assert rms == pytest.approx(float(np.sqrt(np.mean(resid**2))), rel=0.05)


def test_isoflop_axes_keep_every_run_inside():
    """No marker is clipped at the top edge: the loss axis has room above the highest run too."""
    n, d, l, c = isoflop_sweep(noise=0.004, seed=3)
    runs = runs_from_arrays(n, d, l, c)
    ax = ScalingVisualizer(runs, {"isoflop": fit_isoflop(n, d, l, c)}).plot_isoflop().axes[0]
    bottom, top = ax.get_ylim()
    assert top - l.max() > 0.03 * (l.max() - l.min()) and l.min() - bottom > 0.03 * (l.max() - l.min())
