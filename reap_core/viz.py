"""Figures from statistics, plans and fidelity sweeps (Plotly). Pure functions: data in, figure out,
no model work, so the app can redraw them on every slider move (30 layers x 128 experts in a few ms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from .plan import PruningPlan, experts_to_prune
from .saliency import get_criterion
from .stats import ExpertStats

if TYPE_CHECKING:   # only the type: fidelity.py runs models (torch), this module draws
    from .fidelity import FidelityResult

_HEAT = "Viridis"


def _layer_labels(stats: ExpertStats) -> list[str]:
    return [f"L{i}" for i in stats.layer_indices]


def saliency_heatmap(stats: ExpertStats, scores: np.ndarray, criterion: str, plan: PruningPlan | None = None,
                     sort_experts: bool = False, category: str | None = None) -> go.Figure:
    """Layers x experts, colour = the score's place between the layer's lowest and highest
    (layers have different scales, and most criteria crowd near the top of their range).

    With sort_experts each row is ordered by score (x = rank), which makes the cut line of a
    ratio visible as a vertical edge; hover always names the real expert id.
    """
    L, E = scores.shape
    cats = [category] if category else None
    freq, gsum = stats.total("count", cats), stats.total("gated_norm_sum", cats)
    reap = np.divide(gsum, freq, out=np.zeros_like(gsum), where=freq > 0)
    act = stats.total("act_max", cats)
    lo, hi = scores.min(axis=1, keepdims=True), scores.max(axis=1, keepdims=True)
    rel = (scores - lo) / np.maximum(hi - lo, 1e-30)
    order = np.argsort(-scores, axis=1, kind="stable") if sort_experts else np.tile(np.arange(E), (L, 1))
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    expert_ids = order
    # float32 halves what every slider move sends to the browser
    custom = np.stack([expert_ids, take(scores), take(freq), take(reap), take(act)], axis=-1).astype(np.float32)
    label = get_criterion(criterion).label
    # each statistic once, labelled: the criterion's own score, then the others it does not already show
    lines = [f"{label} score: %{{customdata[1]:.4g}}"]
    if criterion != "frequency":
        lines.append("routed tokens: %{customdata[2]:.0f}")
    if criterion != "reap":
        lines.append("REAP: %{customdata[3]:.4g}")
    if criterion != "max_activation":
        lines.append("max |activation|: %{customdata[4]:.3g}")
    fig = go.Figure(go.Heatmap(
        z=take(rel), x=list(range(E)), y=_layer_labels(stats), colorscale=_HEAT, zmin=0, zmax=1,
        customdata=custom, meta={"kind": "saliency"},
        colorbar=dict(title=dict(text="score in layer<br>low → high", side="right"), thickness=10, tickvals=[0, 1],
                      ticktext=["min", "max"]),
        hovertemplate=("layer %{y} · expert %{customdata[0]}<br>" + "<br>".join(lines)
                       + "<br><i>click to inspect</i><extra></extra>")))
    if plan is not None:
        pruned = plan.pruned_mask()
        pos = np.argsort(order, axis=1)  # where each expert sits on the x axis
        rows, cols = np.nonzero(pruned)
        fig.add_trace(go.Scatter(
            x=pos[rows, cols], y=[f"L{stats.layer_indices[r]}" for r in rows], mode="markers",
            marker=dict(symbol="x-thin", size=7, line=dict(width=1.5, color="rgba(255,60,60,0.95)")),
            name=f"pruned ({plan.num_pruned} per layer)", hoverinfo="skip", showlegend=True))
    fig.update_layout(
        xaxis_title="expert rank in layer" if sort_experts else "expert id", yaxis_title="layer",
        xaxis=dict(range=[-0.5, E - 0.5]), yaxis=dict(autorange="reversed"),
        height=max(300, 18 * L + 120), margin=dict(l=45, r=10, t=30, b=40),
        legend=dict(orientation="h", y=1.0, x=0, xanchor="left", yanchor="bottom"))
    return fig


def saliency_caption(criterion: str, plan: PruningPlan | None, sort_experts: bool = False,
                     category: str | None = None) -> str:
    """What the heatmap shows, in words (the figure itself stays small enough for a phone)."""
    label = get_criterion(criterion).label
    scope = f"calibration category **{category}** only" if category else "all calibration categories"
    cut = (f" **×** = the {plan.num_pruned} experts per layer that pruning at {plan.compression_ratio:.0%} "
           f"removes ({plan.num_kept} of {plan.num_experts} kept)." if plan is not None else "")
    order = " Each row is sorted by score (x = rank; hover names the expert)." if sort_experts else ""
    return (f"**{label}** saliency from {scope}: colour = an expert's score between its layer's lowest and "
            f"highest.{cut}{order} **Click a cell** to see where that expert fired.")


def category_heatmap(stats: ExpertStats, layer_row: int) -> go.Figure:
    """For one layer: categories x experts, colour = share of the category's tokens routed there.
    A row sums to top-k (every token goes to k experts)."""
    counts = stats.arrays["count"][:, layer_row, :]                         # [C, E]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * stats.top_k
    layer = f"L{stats.layer_indices[layer_row]}"
    fig = go.Figure(go.Heatmap(z=share, x=list(range(stats.num_experts)), y=stats.categories, colorscale="Magma",
                               meta={"kind": "category", "layer": layer}, zmin=0,
                               colorbar=dict(title=dict(text="share of<br>its tokens", side="right"), thickness=10,
                                             tickformat=".0%"),
                               hovertemplate=(f"{layer} · expert %{{x}}<br>%{{y}}: %{{z:.1%}} of its tokens"
                                              "<br><i>click to inspect</i><extra></extra>")))
    fig.update_layout(xaxis_title=f"expert id (layer {layer})", xaxis=dict(range=[-0.5, stats.num_experts - 0.5]),
                      yaxis=dict(autorange="reversed"), height=max(240, 26 * len(stats.categories) + 110),
                      margin=dict(l=10, r=10, t=20, b=40))
    fig.update_yaxes(automargin=True)
    return fig


def criteria_agreement(stats: ExpertStats, plan_a: PruningPlan, plan_b: PruningPlan) -> go.Figure:
    """Per layer: how many of the experts pruned by criterion A are also pruned by B."""
    n = plan_a.num_pruned
    same = [len(set(plan_a.pruned(r)) & set(plan_b.pruned(r))) for r in range(len(plan_a.kept))]
    chance = n * n / plan_a.num_experts
    la, lb = get_criterion(plan_a.criterion).label, get_criterion(plan_b.criterion).label
    labels = _layer_labels(stats)
    fig = go.Figure(go.Bar(x=labels, y=same, name="pruned by both",
                           hovertemplate="%{x}: %{y} of " + str(n) + " pruned experts in common<extra></extra>"))
    # reference levels as legend entries, not text on the bars (a label on a bar hides it)
    fig.add_trace(go.Scatter(x=labels, y=[n] * len(labels), mode="lines", name=f"all {n}",
                             line=dict(dash="dot", color="gray"), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=labels, y=[chance] * len(labels), mode="lines", name=f"chance ≈ {chance:.1f}",
                             line=dict(dash="dash", color="firebrick"), hoverinfo="skip"))
    mean = float(np.mean(same)) if same else 0.0
    title = f"{la} vs {lb} at {plan_a.compression_ratio:.0%}: {mean:.1f} of {n} pruned experts in common per layer"
    fig.update_layout(title=dict(text=title, font=dict(size=13)),
                      yaxis_title="pruned by both", yaxis=dict(range=[0, max(n, 1) * 1.08]),
                      height=320, margin=dict(l=50, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.15, x=0, xanchor="left", yanchor="top"))
    return fig


SHORT_METRIC = {"kl": "KL, nats/token", "top1": "top-1 agreement", "ppl_ratio": "perplexity ratio"}


def fidelity_figure(result: FidelityResult, metric: str = "kl", current_ratio: float | None = None) -> go.Figure:
    """Ratio on x, the metric on y, one line per criterion; the current ratio as a vertical line."""
    title, baseline = result.metric_axis(metric)
    fig = go.Figure()
    kept = [result.experts_kept(r) for r in result.ratios]
    for c in result.criteria:
        fig.add_trace(go.Scatter(
            x=result.ratios, y=result.series(c, metric), mode="lines+markers", name=get_criterion(c).label,
            customdata=kept, hovertemplate=(f"{get_criterion(c).label}<br>ratio %{{x:.0%}} · %{{customdata}} of "
                                            f"{result.num_experts} kept<br>{metric}: %{{y:.4g}}<extra></extra>")))
    fig.add_hline(y=baseline, line_dash="dot", line_color="gray")
    if current_ratio is not None:
        n_kept = result.num_experts - experts_to_prune(result.num_experts, current_ratio)
        # the label sits at the bottom of the line: the legend lives at the top
        fig.add_vline(x=current_ratio, line_dash="dash", line_color="firebrick",
                      annotation_text=f"current {current_ratio:.0%} ({n_kept} kept)", annotation_position="bottom right",
                      annotation_font=dict(size=11, color="firebrick"))
    h = result.heldout
    fig.update_layout(
        title=dict(text=f"Fidelity vs compression<br><sup>{h.get('sequences')} held-out sequences, "
                        f"{h.get('scored_tokens')} scored tokens ({result.scored_label()})</sup>", font=dict(size=14)),
        xaxis=dict(title="share of experts pruned per layer", tickformat=".0%"),
        yaxis_title=SHORT_METRIC.get(metric, title), height=400, margin=dict(l=55, r=10, t=60, b=40),
        legend=dict(orientation="h", y=-0.18, x=0, xanchor="left", yanchor="top"))
    if metric == "top1":
        fig.update_yaxes(range=[0, 1.02])
    return fig
