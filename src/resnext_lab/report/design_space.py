"""Design spaces compared as populations: complexity-normalised error EDFs, their bootstrap bands, a KS test.

Following Radosavovic et al. (ICCV 2019): the error EDF of a space is F(e), the fraction of its networks with
error at most e. Spaces differ in complexity, so each EDF is normalised: the band is cut into `bins` bins,
equal in log complexity, and each of the m_j networks of a space in bin j gets weight 1/(k m_j), where k
counts the bins that every space fills (networks in a bin some space leaves empty are set aside, and said).
Two spaces are compared by the KS statistic D = max |F_a - F_b| of their normalised EDFs, its p-value by
permutation (space labels shuffled within each bin, so each bin keeps its counts), and by the difference of
their normalised quantiles (error at F = q) with bootstrap intervals. scipy's own two-sample KS test of the
raw errors is reported beside it.

    python -m resnext_lab.report.design_space outputs/design_space/cpu        # written to <sweep>/report/
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from resnext_lab import render
from resnext_lab.config import Rule, integer, number, parse, setting, string, to_python
from resnext_lab.design_space import network_of
from resnext_lab.errors import ConfigError
from resnext_lab.files import write_text_atomic
from resnext_lab.report.collect import metric_value
from resnext_lab.report.plots import metric_label, save_figure
from resnext_lab.results import load_sweep


@dataclasses.dataclass(frozen=True)
class EDFSettings:
    """`report.design_space`: the analysis of a design-space sweep, declared before it runs."""

    metric: str = setting("test/top1_err", string("a key of results.json metrics"), "the error compared")
    bins: int = setting(5, integer(1), "complexity bins, equal in log complexity across the band")
    quantiles: tuple[float, ...] = setting(
        [0.1, 0.25, 0.5],
        Rule(lambda v: isinstance(v, list | tuple) and all(0 < q < 1 for q in v), "a list of numbers in (0, 1)", tuple),
        "the EDF levels whose errors are compared",
    )
    resamples: int = setting(2000, integer(10), "bootstrap and permutation resamples")
    alpha: float = setting(0.05, number(0, 1, open_low=True, open_high=True), "the KS permutation test's level")
    seed: int = setting(0, integer(0), "seeds the resampling")


def bin_edges(values: Sequence[float], bins: int) -> np.ndarray:
    """`bins` bins equal in log complexity from the smallest value to the largest (both included)."""
    low, high = math.log(min(values)), math.log(max(values))
    return np.exp(np.linspace(low, high if high > low else low + 1e-9, bins + 1))


def bin_of(values: Sequence[float], edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def weights(bins: np.ndarray, shared: Sequence[int]) -> np.ndarray:
    """1/(k m_j) for a network in shared bin j (k shared bins, m_j of the space's networks there), 0 elsewhere."""
    out = np.zeros(len(bins))
    for j in shared:
        members = bins == j
        out[members] = 1.0 / (len(shared) * members.sum())
    return out


def edf(errors: Sequence[float], w: Sequence[float], at: Sequence[float]) -> np.ndarray:
    """F(e) = sum of the weights of the networks with error <= e, at each e of `at`."""
    errors, w = np.asarray(errors, float), np.asarray(w, float)
    order = np.argsort(errors)
    cumulative = np.concatenate([[0.0], np.cumsum(w[order])])
    return cumulative[np.searchsorted(errors[order], np.asarray(at, float), side="right")]


def ks_statistic(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """max |F_a - F_b| of two weighted EDFs, (errors, weights) each: scipy's KS statistic for equal weights."""
    at = np.concatenate([a[0], b[0]])
    return float(np.max(np.abs(edf(*a, at) - edf(*b, at))))


def quantile(errors: np.ndarray, w: np.ndarray, q: float) -> float:
    """The smallest error at which the weighted EDF reaches q."""
    order = np.argsort(errors)
    cumulative = np.cumsum(w[order])
    return float(errors[order][min(np.searchsorted(cumulative, q - 1e-12), len(errors) - 1)])


@dataclasses.dataclass
class Space:
    name: str
    errors: np.ndarray
    bins: np.ndarray
    w: np.ndarray


def analyse(frame: pd.DataFrame, settings: EDFSettings, quantity: str) -> dict[str, Any]:
    """The comparison of the first two spaces of `frame` (one row per network: space, error, params, flops)."""
    names = list(dict.fromkeys(frame["space"]))
    if len(names) != 2:
        raise ConfigError(f"a design-space report compares two spaces; the sweep has {len(names)}: {names}")
    edges = bin_edges(frame[quantity].tolist(), settings.bins)
    frame = frame.assign(bin=bin_of(frame[quantity].tolist(), edges))
    shared = sorted(set.intersection(*(set(frame.loc[frame.space == n, "bin"]) for n in names)))
    spaces = []
    for n in names:
        part = frame[frame.space == n]
        spaces.append(Space(n, part["error"].to_numpy(float), part["bin"].to_numpy(), np.array(0)))
        spaces[-1].w = weights(spaces[-1].bins, shared)
    a, b = spaces
    d = ks_statistic((a.errors, a.w), (b.errors, b.w))
    rng = np.random.default_rng(settings.seed)
    pooled_e = np.concatenate([a.errors, b.errors])
    pooled_bin = np.concatenate([a.bins, b.bins])
    is_a = np.concatenate([np.ones(len(a.errors), bool), np.zeros(len(b.errors), bool)])
    beyond = 0
    for _ in range(settings.resamples):
        labels = is_a.copy()
        for j in np.unique(pooled_bin):
            idx = np.flatnonzero(pooled_bin == j)
            labels[idx] = rng.permutation(labels[idx])
        wa, wb = weights(pooled_bin[labels], shared), weights(pooled_bin[~labels], shared)
        beyond += ks_statistic((pooled_e[labels], wa), (pooled_e[~labels], wb)) >= d - 1e-12
    raw = scipy_stats.ks_2samp(a.errors, b.errors)
    grid = np.linspace(pooled_e.min(), pooled_e.max(), 200)
    boot = {s.name: [] for s in spaces}
    boot_q: dict[float, list[float]] = {q: [] for q in settings.quantiles}
    for _ in range(settings.resamples):
        drawn = {}
        for s in spaces:
            idx = np.concatenate([rng.choice(np.flatnonzero(s.bins == j), (s.bins == j).sum()) for j in shared])
            drawn[s.name] = (s.errors[idx], weights(s.bins[idx], shared))
            boot[s.name].append(edf(*drawn[s.name], grid))
        for q in settings.quantiles:
            boot_q[q].append(quantile(*drawn[b.name], q) - quantile(*drawn[a.name], q))
    curves = pd.DataFrame({"error": grid})
    for s in spaces:
        curves[s.name] = edf(s.errors, s.w, grid)
        band = np.percentile(np.array(boot[s.name]), [2.5, 97.5], axis=0)
        curves[f"{s.name} low"], curves[f"{s.name} high"] = band
    quantiles = []
    for q in settings.quantiles:
        low, high = np.percentile(boot_q[q], [2.5, 97.5])
        qa, qb = quantile(a.errors, a.w, q), quantile(b.errors, b.w, q)
        quantiles.append({"q": q, a.name: qa, b.name: qb, "difference": qb - qa, "low": low, "high": high})
    p = (1 + beyond) / (1 + settings.resamples)
    # the permutation p is itself an estimate: the Clopper-Pearson 95% interval of its Monte Carlo error
    mc = scipy_stats.binomtest(int(beyond), settings.resamples).proportion_ci(0.95)
    p_mc = [float(mc.low), float(mc.high)]
    return {
        "spaces": names,
        "counts": {s.name: int(len(s.errors)) for s in spaces},
        "used": {s.name: int((s.w > 0).sum()) for s in spaces},
        "edges": edges.tolist(),
        "shared_bins": shared,
        "ks": {"D": d, "p": p, "resamples": settings.resamples, "p_mc": p_mc},
        "ks_raw": {"D": float(raw.statistic), "p": float(raw.pvalue)},
        "quantiles": quantiles,
        "curves": curves,
        "frame": frame,
        "verdict": _verdict(names, p, p_mc, quantiles, settings.alpha),
        "alpha": settings.alpha,
        "quantity": quantity,
    }


def _verdict(names: list[str], p: float, p_mc: Sequence[float], quantiles: list[dict[str, Any]], alpha: float) -> str:
    if p_mc[0] <= alpha <= p_mc[1]:  # the verdict would hang on which permutations were drawn
        return (
            f"undecided: the normalised KS permutation p = {p:.4f} cannot be told from {alpha:g} (its Monte Carlo "
            f"95% interval {p_mc[0]:.4f}-{p_mc[1]:.4f} includes it)"
        )
    if p >= alpha:
        return f"the two spaces do not differ (normalised KS permutation p = {p:.3f} >= {alpha:g})"
    median = min(quantiles, key=lambda r: abs(r["q"] - 0.5))
    better = names[1] if median["difference"] < 0 else names[0]
    return f"the spaces differ (normalised KS permutation p = {p:.3f} < {alpha:g}); {better}'s EDF lies to the left"


def population(sweep_dir: Path, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per completed sampled network (space, index, error, params, flops, shape), and why others are out."""
    rows, out = [], []
    for r in load_sweep(sweep_dir):
        found = network_of(r.get("overrides") or [])
        if found is None:
            continue
        model, error = r.get("model") or {}, metric_value(r, metric)
        if r.get("status") != "completed" or error is None:
            out.append(f"{found[0]} #{found[1]}: {r.get('status')} {r.get('error') or ''}".rstrip())
            continue
        rows.append(
            {
                "space": found[0],
                "index": found[1],
                "error": error,
                "params": model.get("params"),
                "flops": model.get("flops"),
                "stage_blocks": "-".join(map(str, model.get("stage_blocks") or [])),
                "cardinality": model.get("cardinality"),
                "width": model.get("width"),
                "seed": r.get("seed"),
            }
        )
    frame = pd.DataFrame(rows).sort_values(["space", "index"]).reset_index(drop=True) if rows else pd.DataFrame()
    return frame, out


def figures(result: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """The normalised EDFs with their bootstrap bands, and error against complexity."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves, frame, quantity = result["curves"], result["frame"], result["quantity"]
    edf_fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(edf_fig)
    ax = edf_fig.add_subplot()
    for name, colour in zip(result["spaces"], ("tab:blue", "tab:orange"), strict=True):
        label = f"{name} (n={result['used'][name]})"
        ax.plot(curves["error"], curves[name], color=colour, label=label, drawstyle="steps-post")
        low, high = curves[f"{name} low"], curves[f"{name} high"]
        ax.fill_between(curves["error"], low, high, color=colour, alpha=0.2, step="post")
    ax.set_xlabel(metric_label(metric))
    ax.set_ylabel("normalised EDF: fraction of networks with error <= e")
    ax.set_title(f"KS D = {result['ks']['D']:.3f}, permutation p = {result['ks']['p']:.3f}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    scatter = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(scatter)
    ax = scatter.add_subplot()
    for name, colour in zip(result["spaces"], ("tab:blue", "tab:orange"), strict=True):
        part = frame[frame.space == name]
        ax.scatter(part[quantity], part["error"], s=14, color=colour, alpha=0.7, label=name)
    for edge in result["edges"]:
        ax.axvline(edge, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(f"{quantity} ({'multiply-adds' if quantity == 'flops' else 'parameters'}); dotted: the bins")
    ax.set_ylabel(metric_label(metric))
    ax.legend()
    ax.grid(alpha=0.3)
    return {"edf": edf_fig, "scatter": scatter}


def to_markdown(result: Mapping[str, Any], settings: EDFSettings, notes: Sequence[str], title: str) -> str:
    a, b = result["spaces"]
    frame = result["frame"]
    rows = []
    for name in result["spaces"]:
        part = frame[frame.space == name]
        rows.append(
            (
                name,
                result["counts"][name],
                result["used"][name],
                f"{part['error'].median():.2f}",
                f"{part['error'].min():.2f}",
                f"{part[result['quantity']].median() / 1e6:.2f}M",
            )
        )
    lines = [
        f"# {title}",
        "",
        f"Metric `{settings.metric}`; {settings.bins} bins equal in log {result['quantity']}; "
        f"bins every space fills: {', '.join(map(str, result['shared_bins']))}; {settings.resamples} "
        f"resamples (bootstrap within space and bin; permutation of the space labels within each bin).",
        "",
        *render.markdown(
            ("space", "networks", "in shared bins", "median error", "best error", f"median {result['quantity']}"),
            rows,
            right=("networks", "in shared bins", "median error", "best error", f"median {result['quantity']}"),
        ),
        "",
        "## KS test",
        "",
        *render.markdown(
            ("test", "D", "p"),
            [
                (
                    "complexity-normalised EDFs, permutation within bins",
                    f"{result['ks']['D']:.3f}",
                    f"{_p(result['ks']['p'])} (Monte Carlo 95%: {_p(result['ks']['p_mc'][0])}-"
                    f"{_p(result['ks']['p_mc'][1])})",
                ),
                ("raw errors, scipy.stats.ks_2samp", f"{result['ks_raw']['D']:.3f}", _p(result["ks_raw"]["p"])),
            ],
            right=("D", "p"),
        ),
        "",
        f"**Verdict (alpha {settings.alpha:g}): {result['verdict']}.**",
        "",
        f"## Errors at levels of the normalised EDF ({b} minus {a}, 95% bootstrap interval)",
        "",
        *render.markdown(
            ("F", a, b, "difference [95% CI]"),
            [
                (
                    f"{r['q']:g}",
                    f"{r[a]:.2f}",
                    f"{r[b]:.2f}",
                    f"{r['difference']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]",
                )
                for r in result["quantiles"]
            ],
            right=(a, b, "difference [95% CI]"),
        ),
    ]
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    lines += ["", "Per network: `networks.csv`; the EDFs and their bands: `edf.csv`; plots: `edf.png`, `scatter.png`."]
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else "<1e-4"


def write_design_space_report(
    sweep_dir: str | Path, node: Mapping[str, Any] | None, quantity: str
) -> tuple[dict[str, Any], list[Path]]:
    """report/design_space/{report.md, networks.csv, edf.csv, edf.png, scatter.png} of a design-space sweep."""
    sweep_dir = Path(sweep_dir)
    settings = parse(EDFSettings, to_python(node), "report.design_space")
    frame, out_notes = population(sweep_dir, settings.metric)
    if frame.empty:
        raise ConfigError(f"{sweep_dir}: no completed sampled network: nothing to compare")
    result = analyse(frame, settings, quantity)
    unused = len(frame) - sum(result["used"].values())
    notes = [*out_notes]
    if unused:
        notes.append(f"{unused} network(s) in bins another space leaves empty are set aside from the normalised EDFs")
    out = sweep_dir / "report" / "design_space"
    out.mkdir(parents=True, exist_ok=True)
    written = [
        write_text_atomic(out / "report.md", to_markdown(result, settings, notes, f"Design spaces: {sweep_dir.name}")),
        write_text_atomic(out / "networks.csv", result["frame"].to_csv(index=False)),
        write_text_atomic(out / "edf.csv", result["curves"].to_csv(index=False)),
    ]
    written += [save_figure(fig, out / f"{name}.png") for name, fig in figures(result, settings.metric).items()]
    return result, written


def to_terminal(result: Mapping[str, Any]) -> str:
    rows = [(r["q"], f"{r['difference']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]") for r in result["quantiles"]]
    a, b = result["spaces"]
    return "\n".join(
        [
            f"design spaces {a} (n={result['used'][a]}) vs {b} (n={result['used'][b]}): normalised KS D = "
            f"{result['ks']['D']:.3f}, permutation p = {_p(result['ks']['p'])} (Monte Carlo 95%: "
            f"{_p(result['ks']['p_mc'][0])}-{_p(result['ks']['p_mc'][1])}); {result['verdict']}",
            render.terminal(("F", f"error {b} - {a} [95% CI]"), rows, right=("F",)),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnext_lab.report.design_space", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument(
        "--resamples",
        type=int,
        help="bootstrap and permutation resamples instead of the sweep's report.design_space.resamples "
        "(a closer permutation p; the report names the number it used)",
    )
    args = parser.parse_args(argv)
    multirun = args.sweep_dir / "multirun.yaml"
    if not multirun.is_file():
        print(f"error: {multirun} does not exist: give a design-space sweep's folder", file=sys.stderr)
        return 2
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(multirun)
    node = to_python(OmegaConf.select(cfg, "report.design_space")) or {}
    if args.resamples is not None:
        node = {**node, "resamples": args.resamples}
    try:
        result, written = write_design_space_report(
            args.sweep_dir,
            node,
            str(OmegaConf.select(cfg, "hydra.sweeper.band.quantity") or "flops"),
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(to_terminal(result))
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
