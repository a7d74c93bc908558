"""Calibrated intervals of Approach 2: a parametric bootstrap of the profiles plus the budgets' lack of fit.

The N_opt(C), D_opt(C) and L_opt(C) laws are fitted through per-budget minima, so their uncertainty has two
parts:

1. **Each minimum's own noise.** The profiles' relative residuals give one pooled noise level sigma (with
   nu = runs - profile parameters degrees of freedom); the profile parameters are drawn from their sampling
   distribution, N(theta, sigma*^2 cov), with sigma*^2 = sigma^2 nu / chi2_nu so the draws carry the
   uncertainty of sigma itself (Student-t-like tails with few runs); shared-exponent profiles are refitted to
   losses simulated with that noise instead (``profiles.draw_vertices``). Each draw's vertices are that draw's
   minima; a budget whose drawn profile has no minimum inside its sizes is left out of that draw, as the
   fit would flag it.
2. **Scatter of the minima about the laws beyond that noise** (lack of fit: a law that is not exactly a
   power law over the budgets, budgets trained differently). Its variance tau^2 is the method-of-moments
   estimate max(0, (sum r_k^2 - sum (1 - h_k) v_k) / (K - p)) from the fit's residuals r_k, leverages h_k and
   the minima's variances v_k (from their draws); each draw adds N(0, tau*^2) to every minimum, with tau*^2 =
   tau^2 (K - p) / chi2_(K-p) (K budgets, p law parameters), which gives the t_(K-p) interval of an ordinary
   regression when all the scatter is lack of fit.

The laws are refitted to every draw (the same batched fits as the resampling bootstrap), and 95% percentile
intervals are read off the draws. With fewer than 4 budgets the L_opt law is a pure power law k C^c (an
irreducible loss E needs a fourth budget): real losses flatten towards E, so its extrapolation runs low by
more than its noise says (on Chinchilla-like sweeps with 3 budgets over 1.5 decades, 4% low at 10x and 10%
at 100x, far outside any noise-based interval), and L_opt gets no interval. With 2 budgets (no residual
degree of freedom for a law) or no residual degree of freedom in the profiles (every parabola through exactly
3 points), there is no uncertainty estimate: :func:`parametric_draws` returns None and the caller says why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from flops_fit.analysis.power_law import PowerLawFit, fit_power_law_batch
from flops_fit.analysis.profiles import VertexModel, draw_vertices, vertices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LawInputs:
    """What the draws need of the used budgets (K of them, in the fit's order): ``centers`` (FLOPs),
    ``columns`` (each budget's position in the vertex model), the (ln D, ln N) relation of each budget's
    runs (``d_icpt``, ``d_slope``), the fitted laws and whether the L_opt law has an offset."""

    centers: np.ndarray
    columns: np.ndarray
    d_icpt: np.ndarray
    d_slope: np.ndarray
    laws: tuple[PowerLawFit, PowerLawFit, PowerLawFit]
    offset: bool


@dataclass(frozen=True)
class Draws:
    """Draws of the laws (columns ln k_N, a, ln k_D, b, L_opt offset, ln k, exponent), the pooled relative
    loss noise ``noise_sd`` and the lack-of-fit standard deviations of ln N* and of L* (in the L_opt law's
    residual scale: log for a pure power law, loss for one with an offset)."""

    samples: np.ndarray
    noise_sd: float
    scatter_n: float
    scatter_l: float


def _excess_variance(resid: np.ndarray, design: np.ndarray, var: np.ndarray) -> float:
    """Method-of-moments variance of the scatter of the points about a least-squares fit beyond their own
    variances ``var``: E[sum r^2] = sum (1 - h_k)(v_k + tau^2) with h the leverages of ``design``."""
    k, p = design.shape
    if k <= p:
        return 0.0
    lev = np.einsum("ij,ji->i", design, np.linalg.pinv(design))
    return max(0.0, float((resid**2).sum() - ((1 - lev) * var).sum()) / (k - p))


def _draw_var(draws: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each column's variance over its valid draws (bounded: a valid minimum lies inside its budget's sizes)."""
    return np.nanvar(np.where(valid, draws, np.nan), axis=0)


def _lack_of_fit(
    model: VertexModel, inputs: LawInputs, draws: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[float, float]:
    """tau^2 of ln N* about the N_opt law and of L* about the L_opt law (in that law's residual scale),
    the minima's own variances taken from their draws."""
    x0, l0, _ = (v[0, inputs.columns] for v in vertices(model, model.theta[None]))
    x, l, valid = draws
    var_x, var_l = _draw_var(x, valid), _draw_var(l, valid)
    lc = np.log(inputs.centers)
    n_fit, _, l_fit = inputs.laws
    line = np.stack([np.ones_like(lc), lc], axis=1)
    tau_n = _excess_variance(x0 - (math.log(n_fit.k) + n_fit.a * lc), line, var_x)
    power = l_fit.k * np.power(inputs.centers, l_fit.a)
    if inputs.offset and l_fit.offset:
        jac = np.stack([np.ones_like(lc), power, power * lc], axis=1)
        tau_l = _excess_variance(l0 - (l_fit.offset + power), jac, var_l)
    else:
        tau_l = _excess_variance(np.log(l0) - np.log(l_fit.offset + power), line, var_l / l0**2)
    return tau_n, tau_l


def _scaled_chi2(rng: np.random.Generator, dof: int, reps: int) -> np.ndarray:
    """dof / chi2_dof draws: multiply an estimated variance by these to carry its uncertainty."""
    return dof / rng.chisquare(dof, reps)


def parametric_draws(model: VertexModel, inputs: LawInputs, reps: int, seed: int) -> Draws | None:
    """``reps`` draws of the laws from the profiles' sampling distribution and the laws' lack of fit.

    Returns None when there is no uncertainty estimate: fewer than 3 budgets, or no residual degree of
    freedom in the profiles (``model.dof`` 0).
    """
    k = inputs.centers.size
    if k < 3 or model.dof < 1:
        return None
    rng = np.random.default_rng(seed)
    sigma2 = model.rss / model.dof
    s2 = sigma2 * _scaled_chi2(rng, model.dof, reps)
    x, l, valid = (v[:, inputs.columns] for v in draw_vertices(model, rng, np.sqrt(s2)))
    tau_n, tau_l = _lack_of_fit(model, inputs, (x, l, valid))
    p_l = 3 if inputs.offset and inputs.laws[2].offset else 2
    x = x + _extra(rng, tau_n, k - 2, (reps, k))
    extra_l = _extra(rng, tau_l, k - p_l, (reps, k))
    l = l + extra_l if p_l == 3 else l * np.exp(extra_l)
    w = (valid & np.isfinite(x) & np.isfinite(l) & (l > 0)).astype(float)
    n_star = np.exp(np.where(w > 0, x, 0.0))
    d_star = np.exp(inputs.d_icpt + inputs.d_slope * np.where(w > 0, x, 0.0))
    n_law = fit_power_law_batch(inputs.centers, n_star, w)
    d_law = fit_power_law_batch(inputs.centers, d_star, w)
    l_law = fit_power_law_batch(
        inputs.centers, np.where(w > 0, l, 1.0), w, offset=inputs.offset & (w.sum(1) >= 3)
    )
    out = np.concatenate([n_law[:, 1:], d_law[:, 1:], l_law], axis=1)
    out[w.sum(1) < 2] = np.nan
    if not inputs.offset:
        out[:, 4:] = np.nan  # a pure power law for L_opt omits the irreducible loss: no interval (see above)
    dropped = int((~np.isfinite(out[:, 1])).sum())
    if dropped:
        logger.info(
            "fit_isoflop: %d of %d parametric draws kept fewer than 2 budgets with a minimum", dropped, reps
        )
    return Draws(out[np.isfinite(out[:, 1])], math.sqrt(sigma2), math.sqrt(tau_n), math.sqrt(tau_l))


def _extra(rng: np.random.Generator, tau2: float, dof: int, shape: tuple[int, int]) -> np.ndarray:
    """Lack-of-fit draws: N(0, tau*^2) per budget, tau*^2 = tau2 dof / chi2_dof per draw (0 when tau2 is 0)."""
    if tau2 <= 0 or dof < 1:
        return np.zeros(shape)
    scale = np.sqrt(tau2 * _scaled_chi2(rng, dof, shape[0]))
    return rng.standard_normal(shape) * scale[:, None]
