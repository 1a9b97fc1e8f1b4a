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
    fig = go.Figure(go.Heatmap(
        z=take(rel), x=list(range(E)), y=_layer_labels(stats), colorscale=_HEAT, zmin=0, zmax=1,
        customdata=custom, colorbar=dict(title="layer min → max", thickness=12),
        hovertemplate=("layer %{y} · expert %{customdata[0]}<br>" + label + ": %{customdata[1]:.4g}"
                       "<br>routed tokens: %{customdata[2]:.0f}<br>REAP: %{customdata[3]:.4g}"
                       "<br>max |activation|: %{customdata[4]:.3g}<extra></extra>")))
    if plan is not None:
        pruned = plan.pruned_mask()
        pos = np.argsort(order, axis=1)  # where each expert sits on the x axis
        rows, cols = np.nonzero(pruned)
        fig.add_trace(go.Scatter(
            x=pos[rows, cols], y=[f"L{stats.layer_indices[r]}" for r in rows], mode="markers",
            marker=dict(symbol="x-thin", size=7, line=dict(width=1.5, color="rgba(255,60,60,0.95)")),
            name=f"pruned ({plan.num_pruned} per layer)", hoverinfo="skip", showlegend=True))
    where = f" — category {category}" if category else ""
    fig.update_layout(
        title=f"{label} saliency{where}" + (" (each layer sorted by score)" if sort_experts else ""),
        xaxis_title="expert rank in layer" if sort_experts else "expert id", yaxis_title="layer",
        xaxis=dict(range=[-0.5, E - 0.5]),
        yaxis=dict(autorange="reversed"), height=max(320, 18 * L + 140), margin=dict(l=50, r=20, t=50, b=40),
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    return fig


def category_heatmap(stats: ExpertStats, layer_row: int) -> go.Figure:
    """For one layer: categories x experts, colour = share of the category's tokens routed there."""
    counts = stats.arrays["count"][:, layer_row, :]                         # [C, E]
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * stats.top_k
    fig = go.Figure(go.Heatmap(z=share, x=list(range(stats.num_experts)), y=stats.categories, colorscale="Magma",
                               colorbar=dict(title="share of tokens", thickness=12),
                               hovertemplate="%{y} · expert %{x}<br>%{z:.1%} of its tokens<extra></extra>"))
    fig.update_layout(title=f"Which experts serve which category — layer {stats.layer_indices[layer_row]}",
                      xaxis_title="expert id", height=max(280, 26 * len(stats.categories) + 120),
                      margin=dict(l=140, r=20, t=50, b=40))
    return fig


def criteria_agreement(stats: ExpertStats, plan_a: PruningPlan, plan_b: PruningPlan) -> go.Figure:
    """Per layer: how many of the experts pruned by criterion A are also pruned by B."""
    n = plan_a.num_pruned
    same = [len(set(plan_a.pruned(r)) & set(plan_b.pruned(r))) for r in range(len(plan_a.kept))]
    chance = n * n / plan_a.num_experts
    la, lb = get_criterion(plan_a.criterion).label, get_criterion(plan_b.criterion).label
    fig = go.Figure(go.Bar(x=_layer_labels(stats), y=same, name="pruned by both",
                           hovertemplate="%{x}: %{y} of " + str(n) + " pruned experts in common<extra></extra>"))
    fig.add_hline(y=n, line_dash="dot", annotation_text=f"all {n}", line_color="gray", annotation_position="top left")
    fig.add_hline(y=chance, line_dash="dash", annotation_text=f"chance ≈ {chance:.1f}", line_color="firebrick",
                  annotation_position="top left")
    mean = float(np.mean(same)) if same else 0.0
    fig.update_layout(title=f"{la} vs {lb}: {mean:.1f} of {n} pruned experts in common per layer (mean)",
                      yaxis_title="experts pruned by both", yaxis=dict(range=[0, max(n, 1) * 1.08]),
                      height=320, margin=dict(l=50, r=20, t=50, b=40))
    return fig


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
        fig.add_vline(x=current_ratio, line_dash="dash", line_color="firebrick",
                      annotation_text=f"current {current_ratio:.0%} ({n_kept} kept)", annotation_position="top")
    h = result.heldout
    fig.update_layout(
        title=f"Fidelity vs compression — {h.get('sequences')} held-out sequences, {h.get('scored_tokens')} "
              f"scored tokens ({result.scored_label()})",
        xaxis=dict(title="compression ratio (fraction of experts pruned per layer)", tickformat=".0%"),
        yaxis_title=title, height=380, margin=dict(l=60, r=20, t=60, b=50),
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    if metric == "top1":
        fig.update_yaxes(range=[0, 1.02])
    return fig
