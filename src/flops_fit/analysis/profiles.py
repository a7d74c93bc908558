"""IsoFLOP profile models of Approach 2, and the parameters their intervals are drawn from.

At a fixed budget C (FLOPs) with D = C / (6N) tokens, the Chinchilla form L(N, D) = E + A/N^alpha + B/D^beta
becomes a profile in the model size N (parameters)::

    L_C(N) = E_C + a_C N^-alpha + b_C N^beta,    minimum at N* = (alpha a_C / (beta b_C))^(1 / (alpha + beta)).

Two models of a budget's profile:

- ``"parabola"`` (Hoffmann et al. 2022): a parabola in ln N near the lowest loss (``isoflop.fit_profile``).
  It is the second-order expansion of the profile, exact only when alpha = beta: otherwise its vertex is
  biased, the more so the wider or the more off-centre the sampled sizes (Czech et al. 2026).
- ``"shared"``: the profile above, with the exponents (alpha, beta) shared by all budgets and (E_C, a_C, b_C)
  free per budget. For given exponents the per-budget coefficients are linear least squares, so the fit is a
  search over the two exponents alone (variable projection, Golub & Pereyra 1973); the vertex then follows
  the profile's own asymmetry instead of a parabola's symmetry.

Both are fitted to the relative error of the loss (noise is taken as a fraction of the loss). Each gives a
:class:`VertexModel`: the estimated profile parameters, their covariance per unit noise variance and a map
from parameters to the budgets' vertices, from which ``isoflop_intervals`` draws calibrated intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize

#: The profile models ``fit_isoflop(profile=...)`` accepts.
PROFILE_MODELS = ("parabola", "shared")

FLAG_EDGE_SMALL = "edge_small"  # minimum at the smallest sampled size: extend the sweep to smaller models
FLAG_EDGE_LARGE = "edge_large"  # minimum at the largest sampled size: extend the sweep to larger models
FLAG_TOO_FEW = "too_few_points"
FLAG_FLAT = "flat"
FLAG_CONCAVE = "no_curvature"
# the fitted minimum lies far below every run: the model does not describe the profile
FLAG_DEEP = "deep_vertex"

#: Fewer sizes than this in a budget cannot define a profile.
MIN_POINTS_PER_BUDGET = 3
#: A profile whose fitted loss varies by less than this fraction across the sampled sizes is flat.
FLAT_RELATIVE_DEPTH = 1e-3
#: A fitted minimum more than this fraction below the budget's lowest observed loss is flagged ``deep_vertex``
#: (on 192 budgets of published sweeps, Porian et al. 2024 and Open-Athena's collection, the largest gap was 4.9%).
DEEP_VERTEX_FRACTION = 0.10
#: The exponent search of the shared model: a log-spaced grid over [lo, hi] for alpha and beta, then refined.
EXPONENT_RANGE = (0.01, 4.0)
EXPONENT_GRID = 48
#: Draws refitted at once by :func:`draw_vertices` (bounds the memory of the (grid, draws) arrays).
_BLOCK = 256


@dataclass(frozen=True)
class VertexModel:
    """The profile parameters ``theta`` of the budgets in ``budgets`` (indices into the budget table) and
    what their intervals are drawn from (:func:`draw_vertices`).

    ``rss``: the sum of squared relative residuals; ``dof``: its degrees of freedom (runs minus parameters;
    0 when every profile passes exactly through its points); ``x_mid``: each budget's centre in ln N;
    ``x_range``: each budget's sampled range of ln N, (K, 2). Parabolas (``kind`` "parabola") carry
    ``cov_unit``, the covariance of ``theta`` per unit variance of the relative loss noise; shared profiles
    carry ``groups``, each budget's (ln N - x_mid, fitted loss) to simulate and refit.
    """

    kind: str
    budgets: tuple[int, ...]
    theta: np.ndarray
    rss: float
    dof: int
    x_mid: np.ndarray
    x_range: np.ndarray
    cov_unit: np.ndarray | None = None
    groups: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


def draw_vertices(
    model: VertexModel, rng: np.random.Generator, sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ln N*, L*, valid), each (R, K), of profiles redrawn with relative loss noise ``sigma`` (R,).

    Parabolas are linear least squares: their coefficients are drawn from N(theta, sigma^2 cov_unit), which
    is exactly what refitting losses with Gaussian noise gives. Shared profiles are refitted: losses are
    simulated about the fitted profiles and the exponents searched again on the fit's grid, per draw.
    """
    if model.kind == "parabola":
        assert model.cov_unit is not None
        z = rng.standard_normal((sigma.size, model.theta.size))
        return vertices(model, model.theta + sigma[:, None] * (z @ sqrt_cov(model.cov_unit).T))
    ys = [1 + sigma[:, None] * rng.standard_normal((sigma.size, u.size)) for u, _ in model.groups]
    thetas = [_refit_shared(model, [y[lo : lo + _BLOCK] for y in ys]) for lo in range(0, sigma.size, _BLOCK)]
    return vertices(model, np.concatenate(thetas))


def vertices(model: VertexModel, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ln N*, L*, valid) of every budget for each parameter row of ``theta`` (R, P), each (R, K).

    ``valid`` is False where the profile has no minimum inside the budget's sampled sizes (the fit would
    flag such a budget and leave it out).
    """
    k = len(model.budgets)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if model.kind == "parabola":
            c = theta.reshape(len(theta), k, 3)
            c2, c1, c0 = c[..., 0], c[..., 1], c[..., 2]
            u = -c1 / (2 * c2)
            l_star = c0 - c1**2 / (4 * c2)
            convex = c2 > 0
        else:
            alpha, beta = theta[:, :1], theta[:, 1:2]
            lin = theta[:, 2:].reshape(len(theta), k, 3)
            e, a, b = lin[..., 0], lin[..., 1], lin[..., 2]
            u = np.log(alpha * a / (beta * b)) / (alpha + beta)
            pa, pb = a * np.exp(-alpha * u), b * np.exp(beta * u)
            l_star = e + pa + pb
            convex = (alpha + beta > 0) & (alpha**2 * pa + beta**2 * pb > 0)
        x = model.x_mid + u
        valid = convex & np.isfinite(x) & (x > model.x_range[:, 0]) & (x < model.x_range[:, 1])
    return x, l_star, valid


def sqrt_cov(cov: np.ndarray) -> np.ndarray:
    """A matrix S with S S^T = cov (eigenvalues below 0 clipped): draws are theta + z S^T."""
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return v * np.sqrt(np.clip(w, 0.0, None))


def parabola_model(
    budgets: Sequence[int],
    windows: Sequence[tuple[np.ndarray, np.ndarray]],
    coefs: Sequence[Sequence[float]],
    ranges: Sequence[tuple[float, float]],
) -> VertexModel:
    """The :class:`VertexModel` of per-budget parabolas: ``windows`` (ln N, loss) of the runs each parabola
    was fitted to, ``coefs`` its (c2, c1, c0) in ln N, ``ranges`` each budget's sampled ln N range.

    The parabola is linear least squares, so its coefficients move by A e for a loss perturbation e (A the
    pseudo-inverse of the design): with noise of standard deviation sigma * fitted loss the covariance is
    sigma^2 A diag(fit^2) A^T, exact for Gaussian noise.
    """
    thetas, blocks, mids = [], [], []
    rss, dof = 0.0, 0
    for (x, l), (c2, c1, c0) in zip(windows, coefs, strict=True):
        mid = float(np.mean(x))
        theta = np.array([c2, c1 + 2 * c2 * mid, c0 + c1 * mid + c2 * mid**2])  # in u = ln N - mid
        u = x - mid
        design = np.stack([u**2, u, np.ones_like(u)], axis=1)
        fit = design @ theta
        pinv = np.linalg.pinv(design)
        blocks.append((pinv * fit**2) @ pinv.T)
        rss += float((((l - fit) / fit) ** 2).sum())
        dof += x.size - 3
        thetas.append(theta)
        mids.append(mid)
    cov = np.zeros((3 * len(blocks), 3 * len(blocks)))
    for i, block in enumerate(blocks):
        cov[3 * i : 3 * i + 3, 3 * i : 3 * i + 3] = block
    return VertexModel(
        "parabola",
        tuple(int(b) for b in budgets),
        np.concatenate(thetas) if thetas else np.zeros(0),
        rss,
        dof,
        np.array(mids),
        np.array(ranges, dtype=float).reshape(-1, 2),
        cov_unit=cov,
    )


@dataclass(frozen=True)
class SharedProfile:
    """One budget's profile under the shared-exponent model: ``coef`` (E_C, a_C, b_C) with N in parameters,
    its vertex and flags, ``taylor`` the parabola in ln N with the profile's value and curvature at the
    vertex (NaN without a minimum)."""

    coef: tuple[float, float, float]
    optimal_params: float
    optimal_loss: float
    flags: tuple[str, ...]
    taylor: tuple[float, float, float]


@dataclass(frozen=True)
class SharedFit:
    """The shared-exponent profiles of all budgets: ``alpha``, ``beta``, one :class:`SharedProfile` per
    budget given, and the :class:`VertexModel` of the budgets that have 3 or more sizes."""

    alpha: float
    beta: float
    profiles: tuple[SharedProfile, ...]
    model: VertexModel


def _bases(u: np.ndarray, l: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """(G, m, 3) designs [1, e^(-alpha u), e^(beta u)] / l for exponent pairs (G,): relative residuals."""
    ea = np.exp(-alpha[:, None] * u[None])
    eb = np.exp(beta[:, None] * u[None])
    return np.stack([np.ones_like(ea), ea, eb], axis=-1) / l[None, :, None]


def _rss(groups: Sequence[tuple[np.ndarray, np.ndarray]], alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Sum over budgets of the relative residual sum of squares, the linear coefficients solved out."""
    total = np.zeros(alpha.shape)
    for u, l in groups:
        q, _ = np.linalg.qr(_bases(u, l, alpha, beta))
        ones = np.ones(u.size)
        resid = ones - np.einsum("gmk,gk->gm", q, np.einsum("gmk,m->gk", q, ones))
        total += (resid**2).sum(1)
    return total


def _exponents(groups: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """The exponents minimising :func:`_rss`: the best point of a log grid, refined by Nelder-Mead."""
    _, ga, gb = _grid()
    rss = _rss(groups, ga, gb)
    best = int(np.nanargmin(rss))
    lo, hi = (math.log(v) for v in EXPONENT_RANGE)

    def objective(p: np.ndarray) -> float:
        q = np.clip(p, lo, hi)
        return float(_rss(groups, np.exp(q[:1]), np.exp(q[1:]))[0])

    start = np.log([ga[best], gb[best]])
    sol = optimize.minimize(objective, start, method="Nelder-Mead", options={"xatol": 1e-7, "fatol": 1e-14})
    p = np.clip(sol.x, lo, hi) if sol.fun <= rss[best] else start
    return float(math.exp(p[0])), float(math.exp(p[1]))


def _budget_flags(
    x: np.ndarray, l: np.ndarray, vertex: float, l_star: float, fitted: np.ndarray
) -> list[str]:
    """The flags of one budget (sorted sizes ``x`` = ln N): as ``fit_profile`` sets them for a parabola."""
    flags = []
    i_min = int(np.argmin(l))
    if not np.isfinite(vertex):
        flags.append(FLAG_CONCAVE)
    elif (fitted.max() - l_star) / abs(l_star) < FLAT_RELATIVE_DEPTH:
        flags.append(FLAG_FLAT)
    if i_min == 0 or (np.isfinite(vertex) and vertex <= x[0]):
        flags.append(FLAG_EDGE_SMALL)
    elif i_min == x.size - 1 or (np.isfinite(vertex) and vertex >= x[-1]):
        flags.append(FLAG_EDGE_LARGE)
    if np.isfinite(vertex) and l[i_min] - l_star > DEEP_VERTEX_FRACTION * l[i_min]:
        flags.append(FLAG_DEEP)
    return flags


def fit_shared_profiles(budgets: Sequence[tuple[np.ndarray, np.ndarray]]) -> SharedFit:
    """Fit L_C(N) = E_C + a_C N^-alpha + b_C N^beta to every budget's (N, loss) with shared exponents.

    Budgets with fewer than 3 distinct sizes are flagged ``too_few_points`` and take no part. Raises
    ValueError when the budgets leave no residual degree of freedom (the exponents are then undetermined).
    """
    sorted_budgets = []
    for n, l in budgets:
        order = np.lexsort((l, n))
        sorted_budgets.append((np.log(np.asarray(n, float)[order]), np.asarray(l, float)[order]))
    fitted = [i for i, (x, _) in enumerate(sorted_budgets) if np.unique(x).size >= MIN_POINTS_PER_BUDGET]
    mids = np.array([float(np.mean(sorted_budgets[i][0])) for i in fitted])
    groups = [(sorted_budgets[i][0] - mid, sorted_budgets[i][1]) for i, mid in zip(fitted, mids, strict=True)]
    dof = sum(u.size for u, _ in groups) - 3 * len(groups) - 2
    if dof < 1:
        raise ValueError(
            f"profile='shared' needs more runs than parameters: {sum(u.size for u, _ in groups)} runs in "
            f"{len(groups)} usable budget(s) for {3 * len(groups) + 2} parameters. Train at least 4 sizes per "
            "budget (5-7 recommended), or use profile='parabola'."
        )
    alpha, beta = _exponents(groups)
    lins, fits, rss = [], [], 0.0
    for u, l in groups:
        design = _bases(u, l, np.array([alpha]), np.array([beta]))[0]
        lin = np.linalg.lstsq(design, np.ones(u.size), rcond=None)[0]
        rss += float(((1 - design @ lin) ** 2).sum())
        lins.append(lin)
        fits.append((u, design @ lin * l))
    theta = np.concatenate([[alpha, beta], *lins])
    ranges = np.array([(sorted_budgets[i][0][0], sorted_budgets[i][0][-1]) for i in fitted]).reshape(-1, 2)
    model = VertexModel("shared", tuple(fitted), theta, rss, dof, mids, ranges, groups=tuple(fits))
    return SharedFit(alpha, beta, _shared_profiles(sorted_budgets, fitted, model), model)


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exponent grid: its log-spaced axis and every (alpha, beta) pair, alpha-major."""
    axis = np.geomspace(*EXPONENT_RANGE, EXPONENT_GRID)
    ga, gb = (g.ravel() for g in np.meshgrid(axis, axis, indexing="ij"))
    return axis, ga, gb


def _refit_shared(model: VertexModel, ys: Sequence[np.ndarray]) -> np.ndarray:
    """Parameter rows (R, P) of the shared model refitted to simulated relative losses ``ys`` (per budget,
    (R, m): loss / fitted loss). The exponents are the best grid point, refined by a parabola through its
    neighbours along each axis; the per-budget coefficients are then linear least squares."""
    axis, ga, gb = _grid()
    rss = np.zeros((ga.size, ys[0].shape[0]))
    for (u, fit), y in zip(model.groups, ys, strict=True):
        q = np.linalg.qr(_bases(u, fit, ga, gb))[0]  # (G, m, 3)
        proj = (y @ q.transpose(1, 0, 2).reshape(u.size, -1)).reshape(y.shape[0], ga.size, 3)  # one product
        np.square(proj, out=proj)
        rss += ((y**2).sum(1)[:, None] - proj[..., 0] - proj[..., 1] - proj[..., 2]).T
    best = np.argmin(rss, axis=0)
    rss = rss.reshape(EXPONENT_GRID, EXPONENT_GRID, -1)
    step = math.log(axis[1] / axis[0])
    i, j = np.unravel_index(best, (EXPONENT_GRID, EXPONENT_GRID))
    cols = np.arange(best.size)
    exps = []
    for centre, along in ((i, lambda t: rss[t, j, cols]), (j, lambda t: rss[i, t, cols])):
        inner = np.clip(centre, 1, EXPONENT_GRID - 2)
        lo, mid, hi = along(inner - 1), along(inner), along(inner + 1)
        curv = lo - 2 * mid + hi
        with np.errstate(invalid="ignore", divide="ignore"):
            shift = np.where(curv > 0, np.clip((lo - hi) / (2 * curv), -0.5, 0.5), 0.0)
        shift = np.where(centre == inner, shift, 0.0)  # at the grid's edge: no refinement
        exps.append(axis[centre] * np.exp(shift * step))
    alpha, beta = exps
    rows = [alpha[:, None], beta[:, None]]
    for (u, fit), y in zip(model.groups, ys, strict=True):
        q, r = np.linalg.qr(_bases(u, fit, alpha, beta))
        rows.append(np.linalg.solve(r, np.einsum("rmk,rm->rk", q, y)[..., None])[..., 0])
    return np.concatenate(rows, axis=1)


def _shared_profiles(
    sorted_budgets: Sequence[tuple[np.ndarray, np.ndarray]], fitted: Sequence[int], model: VertexModel
) -> tuple[SharedProfile, ...]:
    """One :class:`SharedProfile` per budget from the fitted model (too-few-sizes budgets flagged)."""
    alpha, beta = float(model.theta[0]), float(model.theta[1])
    nan3 = (math.nan,) * 3
    out = {}
    for j, i in enumerate(fitted):
        x, l = sorted_budgets[i]
        e, a, b = (float(v) for v in model.theta[2 + 3 * j : 5 + 3 * j])
        mid = float(model.x_mid[j])
        fitted_l = e + a * np.exp(-alpha * (x - mid)) + b * np.exp(beta * (x - mid))
        vertex, l_star, curv = math.nan, math.nan, math.nan
        if alpha * a / (beta * b) > 0:
            u = math.log(alpha * a / (beta * b)) / (alpha + beta)
            pa, pb = a * math.exp(-alpha * u), b * math.exp(beta * u)
            curv = alpha**2 * pa + beta**2 * pb
            if curv > 0:
                vertex, l_star = mid + u, e + pa + pb
        flags = _budget_flags(x, l, vertex, l_star, fitted_l)
        coef = (e, a * math.exp(alpha * mid), b * math.exp(-beta * mid))
        if not flags:
            taylor = (curv / 2, -curv * vertex, l_star + curv / 2 * vertex**2)
            out[i] = SharedProfile(coef, math.exp(vertex), l_star, (), taylor)
        else:  # as for a parabola: no extrapolated vertex, the best observed run is reported
            i_min = int(np.argmin(l))
            out[i] = SharedProfile(coef, math.exp(x[i_min]), float(l[i_min]), tuple(flags), nan3)
    for i, (x, l) in enumerate(sorted_budgets):
        if i not in out:
            i_min = int(np.argmin(l))
            out[i] = SharedProfile(nan3, math.exp(x[i_min]), float(l[i_min]), (FLAG_TOO_FEW,), nan3)
    return tuple(out[i] for i in range(len(sorted_budgets)))
