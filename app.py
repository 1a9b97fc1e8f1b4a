"""REAP Studio — see and feel what expert pruning does to a Mixture-of-Experts LLM.

UI wiring only: every handler is a few lines around one reap_core function; engine errors
(ReapError) become a short message in the page and the app keeps working. Reads top to bottom
as the method: 1 model -> 2 calibrate -> 3 saliency -> 4 compression -> 5 chat -> 6 evaluate -> 7 export.

    python app.py                       # opens on the bundled model, offline, CPU is fine
    REAP_STUDIO_MODEL=google/gemma-4-26b-a4b-it python app.py   # default model on a GPU box
"""

from __future__ import annotations

import contextvars
import functools
import html
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import gradio as gr

from reap_core.calibration import (LOCAL_LIMITS, PUBLIC_LIMITS, TOY_PREFIX, CalibrationLimits, build_calibration,
                                   builtin_categories)
from reap_core.card import card_eval_results
from reap_core.chat import GenerationSettings, check_prompt_length, split_reasoning, stream_variants
from reap_core.demo import (EXAMPLES, KNOWS, load_pack, pack_for, precomputed_eval, precomputed_stats,
                            precomputed_sweep)
from reap_core.errors import Cancelled, ReapError
from reap_core.eval_defaults import defaults_for, is_bundled
from reap_core.export import describe_verification, export_merged, export_pruned, new_output_dir, output_label
from reap_core.fidelity import DEFAULT_CRITERIA, METRICS, FidelityCache, feasible_ratios
from reap_core.generation_quality import GENERATION_DEFINITIONS, generation_quality
from reap_core.heldout import build_heldout, calibration_exclusion
from reap_core.hub import push_folder
from reap_core.merge_plan import MERGE_LABELS, MERGE_METHODS
from reap_core.model import BUNDLED_MODEL, GEMMA4_26B
from reap_core.plan import PruningPlan, make_plan
from reap_core.progress import ProgressClock, ProgressState
from reap_core.prune import PLAN_FILE
from reap_core.saliency import CRITERIA, MERGE_PREFIX, compute_scores, get_criterion
from reap_core.stats import ExpertStats
from reap_core.studio import (MergeCache, ModelCache, SessionSignals, StatsCache, calibration_line, compression_table,
                              flagships, model_card, plan_caption, plan_summary, thinking_switch)
from reap_core.task_eval import task_accuracy
from reap_core.vision_eval import bundled_report_markdown
from reap_core.viz import category_heatmap, criteria_agreement, fidelity_figure, saliency_caption, saliency_heatmap
from reap_core.workspace import Workspace, detect_mode

try:  # ZeroGPU on Spaces: GPU work must run inside spaces.GPU functions; locally a no-op
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:
    spaces = None

    def gpu(fn):
        return fn

ZERO_GPU = spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def zero_gpu_call(fn):
    """One ZeroGPU call of `fn`, as long as the engine expects it to take (sequential.GpuCall). A new
    wrapper each time, so spaces forks a new worker, which holds the model as it is now."""
    return spaces.GPU(functools.partial(fn), duration=lambda *a, expected_seconds=60.0, **k: int(expected_seconds))

DEFAULT_MODEL = os.environ.get("REAP_STUDIO_MODEL", BUNDLED_MODEL)
ON_SPACE = bool(os.environ.get("SPACE_ID"))
MODE = detect_mode()          # public on a Space / beyond loopback / REAP_STUDIO_PUBLIC=1 (reap_core.workspace)
# the bundled model first, then every family's flagships with their sizes (assets/flagships.json)
MODEL_CHOICES = ([("Bundled toy Gemma 4 MoE — offline, CPU (toy-gemma4-moe)", BUNDLED_MODEL)]
                 + [(f.label(), f.hub_id) for f in flagships()])
# The models the server's owner offers: in public mode only these may be read with the server's own
# token (e.g. a gated Gemma 4); any other Hub id is read with the visitor's sign-in, or anonymously.
OWNER_MODELS = {BUNDLED_MODEL, GEMMA4_26B, DEFAULT_MODEL}
CRITERION_CHOICES = [(c.label, c.name) for c in CRITERIA.values()]
MERGE_CHOICES = [(MERGE_LABELS[m], m) for m in MERGE_METHODS]
SWEEP_CHOICES = CRITERION_CHOICES + [(label, MERGE_PREFIX + m) for label, m in MERGE_CHOICES]
ZERO_GPU_BYTES = 70 * 10**9    # one ZeroGPU call's share of an H200 ("large"); its main process has no GPU to ask
MODELS = ModelCache(device_bytes=ZERO_GPU_BYTES if ZERO_GPU else None)
STATS, FIDELITY, SIGNALS, MERGES = StatsCache(), FidelityCache(), SessionSignals(), MergeCache()
PACK = load_pack()            # results precomputed for the bundled model's default calibration (reap_core.demo)
WORK = Workspace(os.environ.get("REAP_STUDIO_WORKDIR") or
                 Path(tempfile.gettempdir()) / f"reap-studio-{os.environ.get('GRADIO_SERVER_PORT', '7860')}")
ALL_CATEGORIES = "all categories"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: generous locally, bounded in public so no visitor holds the
    machine (memory, the shared queue) for long."""
    upload: str                          # gradio's max_file_size for every upload
    calibration: CalibrationLimits       # file bytes, samples, characters per sample
    calibration_tokens: int              # all samples x their tokens, per calibration
    stats_bytes: int                     # a statistics upload
    prompt_chars: int
    prompt_tokens: int                   # the whole conversation as the model sees it


LIMITS = (Limits("20mb", PUBLIC_LIMITS, 262_144, 50 * 10**6, 16_000, 4_096) if MODE.public else
          Limits("2gb", LOCAL_LIMITS, 50_000_000, 2 * 10**9, 400_000, 131_072))


@dataclass(frozen=True)
class ExportRecord:
    """The export a session made and verified: what its push uploads, and nothing else."""
    path: str
    verified: bool
    plan: str            # plan_summary, for the push message


@dataclass(frozen=True)
class Session:
    """One browser tab's work (gr.State). Loaded models are shared by all sessions; what is here is
    this visitor's own. Handlers return a new Session (dataclasses.replace), never mutate one."""
    model_id: str | None = None
    stats: ExpertStats | None = None
    plan: PruningPlan | None = None          # what chat, evaluation and export use: `pruned` or `merged`
    evals: dict = field(default_factory=dict)   # "fidelity" | "generation" | "tasks" -> result
    export: ExportRecord | None = None
    pruned: PruningPlan | None = None        # the last prune (step 4)
    merged: PruningPlan | None = None        # the last merge: its representatives' plan, the merge in `extra`


def session_id(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


class DrawnViews:
    """What each session's views (heatmap, comparison, fidelity plot) were last drawn from. After quick
    key steps gradio's ratio slider keeps re-sending change events with the same value; redrawing the
    same view for them would keep the page busy and overwrite newer status text, so a repeat is skipped."""

    def __init__(self):
        self._drawn: dict[tuple[str, str], tuple] = {}
        self._lock = threading.Lock()

    def repeat(self, request: gr.Request | None, view: str, *inputs) -> bool:
        """True when `view` was last drawn from these very inputs (objects compared by identity)."""
        if request is None:            # a direct call (tests, scripts): always draw
            return False
        key, drawn = (session_id(request), view), tuple(id(x) if not isinstance(x, (str, int, float, bool, type(None)))
                                                        else x for x in inputs)
        with self._lock:
            last = self._drawn.get(key)
            self._drawn[key] = (drawn, inputs)         # the inputs stay referenced: their ids stay theirs
        return last is not None and last[0] == drawn

    def forget(self, sid: str) -> None:
        with self._lock:
            for key in [k for k in self._drawn if k[0] == sid]:
                del self._drawn[key]


DRAWN = DrawnViews()


def on_ratio_view(criterion, ratio, protect, sort_experts, category, session: Session, request: gr.Request = None):
    if DRAWN.repeat(request, "view", criterion, ratio, protect, sort_experts, category, session.stats, session.plan):
        return (gr.skip(),) * 5
    return on_view(criterion, ratio, protect, sort_experts, category, session)


def on_ratio_compare(criterion_a, criterion_b, ratio, session: Session, request: gr.Request = None):
    if DRAWN.repeat(request, "compare", criterion_a, criterion_b, ratio, session.stats):
        return gr.skip()
    return on_compare(criterion_a, criterion_b, ratio, session)


def on_ratio_fidelity(metric, ratio, session: Session, request: gr.Request = None):
    if DRAWN.repeat(request, "fidelity", metric, ratio, session.evals.get("fidelity")):
        return gr.skip()
    return on_fidelity_redraw(metric, ratio, session)


def model_token(model_id: str, oauth_token: gr.OAuthToken | None):
    """The token a model is read with: locally the saved one (None); in public mode the visitor's
    own, or none at all (False) — the server's token only for the models its owner offers."""
    if not MODE.public:
        return None
    if oauth_token is not None and oauth_token.token:
        return oauth_token.token
    return None if (model_id or "").strip() in OWNER_MODELS else False


def stop_check(event, what: str):
    """A progress wrapper that raises Cancelled at the next step once the session's flag is set."""
    def check():
        if event.is_set():
            raise Cancelled(f"{what} cancelled — nothing was changed")
    return check


# Status lines start with a word, not an emoji: a machine without an emoji font shows emoji as boxes.
def ok(text: str) -> str:
    return f"**Done:** {text}"


def fail(exc: Exception) -> str:
    return f"**{'Stopped' if isinstance(exc, Cancelled) else 'Error'}:** {exc}"


def session_model(session: Session):
    if not session.model_id:
        raise ReapError("load a model first (step 1)")
    return MODELS.get(session.model_id)


def session_stats(session: Session) -> ExpertStats:
    if session.stats is None:
        raise ReapError("run a calibration first (step 2), or upload a statistics file")
    return session.stats


# --- long actions: a worker thread, and a progress bar the page can see ------------------------

POLL_SECONDS = 0.5


def progress_html(state: ProgressState) -> str:
    """A real bar (role=progressbar) with counts, elapsed time and ETA, drawn inside the status."""
    pct = state.fraction * 100
    return (f'<div class="reap-progress" role="progressbar" aria-label="{html.escape(state.what)}" '
            f'aria-valuemin="0" aria-valuemax="100" aria-valuenow="{pct:.0f}">'
            f'<div class="reap-progress-track"><div class="reap-progress-fill" style="width: {pct:.1f}%"></div></div>'
            f'<div class="reap-progress-text">{html.escape(state.line())}</div></div>')


class Background:
    """Runs `work()` in a worker thread so the handler (a generator) can yield progress meanwhile.

    `with Background(...) as job: for state in job.states(): yield …; result = job.result()`.
    Leaving the block early (the tab closed, the event was cancelled) sets `stop`, which the work's
    progress callback turns into Cancelled at its next step: no orphaned computation holds the model.
    """

    def __init__(self, work: Callable[[], object], clock: ProgressClock, stop: threading.Event):
        self.clock, self.stop, self._box = clock, stop, {}
        # the handler's context goes with it (ZeroGPU's spaces.GPU reads the visitor's request from it)
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run, work),
                                        name=f"reap-{clock.what}", daemon=True)

    def _run(self, work) -> None:
        try:
            self._box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 — handed to the handler's thread in result()
            self._box["error"] = exc

    def __enter__(self) -> "Background":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self.stop.set()

    def states(self):
        yield self.clock.latest
        while self._thread.is_alive():
            self._thread.join(POLL_SECONDS)
            if self._thread.is_alive():
                yield self.clock.latest

    def result(self):
        self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]


def precomputed_note() -> str:
    return (f" *Precomputed — {PACK.created if PACK else ''}; untick **Use precomputed results** (step 2) to "
            "measure it live.*")


# --- 1. model --------------------------------------------------------------------------------

def on_load_model(model_id: str, session: Session, request: gr.Request, oauth_token: gr.OAuthToken | None = None,
                  progress=gr.Progress()):
    try:
        progress(0.1, desc=f"Loading {model_id} …")
        loaded = MODELS.get(model_id, token=model_token(model_id, oauth_token), allow_local_paths=not MODE.public)
        progress(0.9, desc="Counting parameters …")
        card = model_card(loaded, *MODELS.counts(loaded)).markdown()
        why = MODELS.layer_by_layer(loaded)
        if why:
            card += (f"\n\n**Layer by layer** — {why}: the decoder layers stay on disk. Calibration brings one "
                     f"layer at a time onto the device (same statistics as one pass); chat and evaluation read the "
                     f"layers from disk as they go, so they are slow.")
    except ReapError as exc:  # keep the model, statistics and prune already there — and say so
        return still_loaded(exc, session), session, gr.update(), gr.update()
    session = Session(model_id=model_id)
    toy = [c for c in builtin_categories() if c.startswith(TOY_PREFIX)]
    general = [c for c in builtin_categories() if c not in toy]
    default = toy if model_id == BUNDLED_MODEL else general
    return (card, session, gr.update(choices=toy + general, value=default),
            gr.update(visible=loaded.is_multimodal and loaded.processor is not None))


def still_loaded(exc: Exception, session: Session) -> str:
    """A failed load's message, then the card of the model that is still loaded (if any)."""
    if not session.model_id:
        return fail(exc) + "\n\nNo model is loaded."
    try:
        loaded = MODELS.get(session.model_id)
        card = model_card(loaded, *MODELS.counts(loaded)).markdown()
    except ReapError:
        return fail(exc)
    return (fail(exc) + f"\n\n**Still loaded: `{session.model_id}`** — your statistics and prune are kept.\n\n"
            + card)


def on_model_controls(session: Session):
    """What the loaded model can use: thinking, the example prompts that fit it, precomputed results."""
    try:
        loaded = session_model(session)
    except ReapError:
        return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
    toy = is_bundled(loaded)
    switch = thinking_switch(loaded)
    thinking = gr.update(label=switch.label, info=switch.info, interactive=switch.enabled,
                         **({} if switch.enabled else {"value": False}))
    has_pack = pack_for(loaded, PACK) is not None
    return (thinking, gr.update(visible=toy), gr.update(visible=not toy), gr.update(visible=toy),
            gr.update(visible=has_pack, value=has_pack))


# --- 2. calibrate ----------------------------------------------------------------------------

def calibration_spec(categories: list[str], hub_spec: str, upload) -> tuple[str, bool]:
    """(spec, may it name a file on the server): only gradio's own upload may, or anything locally."""
    if upload is not None:
        return str(upload), True
    if hub_spec and hub_spec.strip():
        return hub_spec.strip(), not MODE.public
    if not categories:
        raise ReapError("choose at least one built-in category, a Hub dataset, or upload a file")
    return "builtin:" + ",".join(categories), False


def on_calibrate(categories, samples, hub_spec, upload, max_tokens, session: Session, use_precomputed: bool = True,
                 request: gr.Request = None):
    sid = session_id(request)
    stop = SIGNALS.start(sid, "work")
    cancelled = stop_check(stop, "calibration")
    try:
        loaded = session_model(session)
        spec, local_files = calibration_spec(categories, hub_spec, upload)
        calib = build_calibration(spec, loaded.tokenizer, max_tokens=int(max_tokens),
                                  samples_per_category=int(samples) if samples else None,
                                  limits=LIMITS.calibration, allow_local_files=local_files,
                                  processor=loaded.processor)
        if calib.num_tokens > LIMITS.calibration_tokens:
            raise ReapError(f"this calibration is {calib.num_tokens:,} tokens; the limit here is "
                            f"{LIMITS.calibration_tokens:,}: choose fewer samples or fewer tokens per sample")
        stats = precomputed_stats(loaded, calib.fingerprint(), PACK) if use_precomputed else None
        source = "precomputed" if stats is not None else ""
        if stats is None:
            # on ZeroGPU every layer is a short GPU call of its own (the whole calibration would outlast one)
            layered = ZERO_GPU or MODELS.layer_by_layer(loaded) is not None
            clock = ProgressClock(("Calibration, one ZeroGPU call per layer" if ZERO_GPU else
                                   "Calibration, layer by layer") if layered else "Calibration",
                                  "layer-batches" if layered else "tokens")
            clock.update(0, calib.num_tokens)

            def report(done, total, tokens):
                cancelled()
                clock.update(tokens, calib.num_tokens, f"sample {done} of {total}")

            def layer_report(layer, layers, batch, batches):
                cancelled()
                clock.update(layer * batches + batch, layers * batches,
                             f"layer {layer + 1} of {layers}, batch {batch} of {batches}")

            with Background(lambda: STATS.get_or_observe(loaded, calib, batch_size=4, progress=report,
                                                         layer_progress=layer_report, layer_by_layer=layered,
                                                         gpu_call=zero_gpu_call if ZERO_GPU else None),
                            clock, stop) as job:
                for state in job.states():
                    yield progress_html(state), session, gr.update()
                stats, cached = job.result()
            source = "cache" if cached else ""
    except ReapError as exc:  # includes Cancelled: the statistics already there are kept
        yield fail(exc), session, gr.update()
        return
    session = replace(session, stats=stats, plan=None, evals={})  # results of other statistics are stale
    path = WORK.scratch_dir(sid, "stats") / f"reap-stats-{stats.fingerprint()}.npz"
    stats.save(path)
    WORK.sweep(keep=sid)
    summary = ", ".join(f"{literal(c)}: {n:,}" for c, n in zip(stats.categories, stats.tokens_per_category))
    note = {"cache": " (from cache: same model and calibration data)", "precomputed": "",
            "": ""}[source]
    text = (ok(f"Observed **{stats.num_tokens:,} tokens** from {stats.calibration['samples']} samples{note} — "
               f"{summary}") + (precomputed_note() if source == "precomputed" else ""))
    yield text, session, gr.update(value=str(path), visible=True)


def on_upload_stats(file, session: Session):
    try:
        loaded = session_model(session)
        if file is None:
            raise ReapError("no statistics file given")
        stats = ExpertStats.load(file, max_bytes=LIMITS.stats_bytes)
        stats.check_matches(loaded.moe_layer_indices, loaded.num_experts, loaded.top_k)
    except ReapError as exc:
        return fail(exc), session
    return (ok(f"Loaded statistics of {stats.num_tokens} tokens ({literal(stats.model_id)})"),
            replace(session, stats=stats, plan=None, evals={}))


# --- 3. saliency and 4. compression (statistics only: instant) -------------------------------

def chosen_categories(category: str | None) -> list[str] | None:
    return None if category in (None, "", ALL_CATEGORIES) else [category]


def scope_words(categories: list[str] | tuple[str, ...] | None) -> str:
    return (f"calibration category **{', '.join(categories)}** only" if categories
            else "all calibration categories")


def stale_notice(current: PruningPlan | None, criterion, ratio, protect, category) -> str | None:
    """Why the chat no longer matches the controls (criterion, ratio, category or protection changed)."""
    if current is None:
        return None
    if current.extra.get("merge"):   # a merge uses the ratio only (its clusters come from every category)
        if abs(current.compression_ratio - ratio) <= 1e-9:
            return None
        return (f"**Out of date:** chat and evaluation still use the last merge ({plan_summary(current)}). "
                f"Changed since: ratio {current.compression_ratio:.0%} → {ratio:.0%}. Press **Merge** to apply.")
    cats = chosen_categories(category)
    changes = []
    if current.criterion != criterion:
        changes.append(f"criterion {get_criterion(current.criterion).label} → {get_criterion(criterion).label}")
    if abs(current.compression_ratio - ratio) > 1e-9:
        changes.append(f"ratio {current.compression_ratio:.0%} → {ratio:.0%}")
    if tuple(cats or ()) != tuple(current.categories or ()):
        changes.append(f"scores from {scope_words(current.categories)} → {scope_words(cats)}")
    if bool(current.protected) != bool(protect):
        changes.append("super-expert protection " + ("on" if protect else "off"))
    if not changes:
        return None
    return (f"**Out of date:** chat and evaluation still use the last prune ({plan_summary(current)}). "
            f"Changed since: {'; '.join(changes)}. Press **Prune** to apply.")


def on_view(criterion, ratio, protect, sort_experts, category, session: Session):
    """Heatmap + size table for the current settings; runs on every slider move."""
    notice = stale_notice(session.plan, criterion, ratio, protect, category)
    if notice is None:   # back in step with the prune (or nothing pruned yet): say what chat uses
        notice = pruned_status(session.plan) if session.plan is not None else gr.update()
    try:
        loaded = session_model(session)
        stats = session_stats(session)
        counts, fmt = MODELS.counts(loaded)
        table = compression_table(counts, ratio, fmt)
        cats = chosen_categories(category)
        plan = make_plan(stats, ratio, criterion, protect_super_experts=protect, categories=cats)
        scores = compute_scores(stats, criterion, categories=cats)
        fig = saliency_heatmap(stats, scores, criterion, plan, sort_experts=sort_experts,
                               category=cats[0] if cats else None)
    except ReapError as exc:
        return gr.update(), fail(exc), gr.update(), notice, gr.update()
    will = (f"\n\n**Prune will use:** {get_criterion(criterion).label} scores from {scope_words(cats)}"
            f" — {plan.num_pruned} of {plan.num_experts} experts removed in every layer"
            + ("; super experts protected" if protect else "") + ".")
    return (fig, table + will, gr.update(choices=[ALL_CATEGORIES] + stats.categories),
            notice, saliency_caption(criterion, plan, sort_experts, cats[0] if cats else None))


def notice_figure(text: str):
    """An empty plot that says why it is empty (a blank plot with no message looks broken)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, font=dict(size=14), x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(xaxis_visible=False, yaxis_visible=False, height=220, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def on_category_view(layer_label, session: Session):
    try:
        stats = session_stats(session)
        labels = [f"L{i}" for i in stats.layer_indices]
        if layer_label and layer_label not in labels:
            raise ReapError(f"no MoE layer {layer_label}: choose one of {', '.join(labels)}")
        return category_heatmap(stats, labels.index(layer_label) if layer_label else 0)
    except ReapError as exc:
        return notice_figure(str(exc))


def on_expert(layer_label, expert, session: Session):
    try:
        stats = session_stats(session)
        labels = [f"L{i}" for i in stats.layer_indices]
        if layer_label and layer_label not in labels:
            raise ReapError(f"no MoE layer {layer_label}: choose one of {', '.join(labels)}")
        row = labels.index(layer_label) if layer_label else 0
        layer_label = labels[row]
        expert = int(expert)
        if not 0 <= expert < stats.num_experts:
            raise ReapError(f"expert must be between 0 and {stats.num_experts - 1}")
    except (ReapError, ValueError, TypeError) as exc:
        return fail(exc)
    items = (stats.top_tokens or [[[]]])[row][expert] if stats.top_tokens else []
    count = int(stats.total("count")[row, expert])
    if not items:
        return (f"**Expert {expert}, layer {layer_label}** was routed **no** calibration tokens: every data-driven "
                "criterion scores it 0.")
    lines = [f"**Expert {expert}, layer {layer_label}** — {count} routed tokens. Where gate·‖f‖ peaked "
             "(the highlighted token; the text around it is its context):", "",
             "| gate·‖f‖ | category | context |", "|---:|---|---|"]
    for it in items:
        lines.append(f"| {it['score']:.3g} | {it['category']} | …{literal(it['before'])}<mark>{literal(it['token'])}"
                     f"</mark>{literal(it['after'])}… |")
    return "\n".join(lines)


def on_heatmap_click(value: str, session: Session):
    """A heatmap cell was clicked (the page sends 'L<layer>:<expert>'): open that expert."""
    layer, _, expert = (value or "").partition(":")
    if not layer or not expert.strip().lstrip("-").isdigit():
        return gr.update(), gr.update(), gr.update()
    return gr.update(value=layer), gr.update(value=int(expert)), on_expert(layer, int(expert), session)


def literal(text: str) -> str:
    """Model text shown verbatim inside a Markdown table: no markup, no HTML, visible newlines."""
    text = html.escape(text, quote=False).replace("\n", "⏎")
    for ch in "\\|`*_[]#~":
        text = text.replace(ch, "\\" + ch)
    return text


def on_compare(criterion_a, criterion_b, ratio, session: Session):
    try:
        stats = session_stats(session)
        return criteria_agreement(stats, make_plan(stats, ratio, criterion_a), make_plan(stats, ratio, criterion_b))
    except ReapError as exc:
        return notice_figure(str(exc))


def pruned_status(plan: PruningPlan) -> str:
    scope = (f"Pruned using calibration category **{', '.join(plan.categories)}** only (chosen in step 3)"
             if plan.categories else "Scores from all calibration categories")
    return ok(f"Pruned view active — {plan_summary(plan)}. {scope}. Chat below uses it; the weights are untouched.")


def on_prune(criterion, ratio, protect, category, session: Session):
    try:
        session_model(session)
        stats = session_stats(session)
        cats = chosen_categories(category)
        plan = make_plan(stats, ratio, criterion, protect_super_experts=protect, categories=cats)
    except ReapError as exc:
        return fail(exc), session, gr.update(), gr.update()
    return (pruned_status(plan), use_plan(replace(session, pruned=plan), plan), pane_head(plan),
            gr.update(value="pruned"))


def pane_head(plan: PruningPlan) -> str:
    what = "Merged" if plan.extra.get("merge") else "Pruned"
    return (f"**{what}** — {plan.num_kept} of {plan.num_experts} experts per layer "
            f"({get_criterion(plan.criterion).label} {plan.compression_ratio:.0%})")


def use_plan(session: Session, plan: PruningPlan) -> Session:
    """The session with `plan` as what chat, evaluation and export use; the fidelity sweep depends on the
    statistics only and stays, generation quality and task accuracy belonged to the previous one."""
    return replace(session, plan=plan, evals={k: v for k, v in session.evals.items() if k == "fidelity"})


def session_view(session: Session):
    """What the session's plan means for the model: the PruningPlan itself (a masked view), or, for a merge,
    the merged model (MergeCache: built once, the merged experts kept beside the shared weights)."""
    plan = session.plan
    merge = plan.extra.get("merge") if plan is not None else None
    if not merge:
        return plan
    return MERGES.merged(session_model(session), session_stats(session), merge["method"], plan.compression_ratio,
                         allow_local_files=not MODE.public)


def merged_status(plan: PruningPlan, merged) -> str:
    return ok(f"Merged view active — {plan_summary(plan)}: each merged expert averages a cluster of "
              f"1–{merged.plan.largest_cluster} "
              f"experts{' (neurons aligned first)' if merged.plan.align else ''} and keeps its representative's "
              f"router row. Memory: the merged experts are a copy beside the original weights, "
              f"**{merged.nbytes / 2**20:.1f} MB** (built in {merged.seconds:.1f} s). Chat, evaluation and export "
              f"below use it.")


@gpu
def on_merge(method, ratio, session: Session, request: gr.Request = None):
    stop = SIGNALS.start(session_id(request), "work")
    cancelled = stop_check(stop, "merge")
    try:
        loaded, stats = session_model(session), session_stats(session)
        if method not in MERGE_METHODS:
            raise ReapError(f"choose a merge method: {', '.join(MERGE_METHODS)}")
        clock = ProgressClock("Merge signals: one more pass of the calibration data", "samples")

        def report(done, total, tokens):
            cancelled()
            clock.update(done, total, f"{tokens:,} tokens")

        with Background(lambda: MERGES.merged(loaded, stats, method, float(ratio), progress=report,
                                              allow_local_files=not MODE.public), clock, stop) as job:
            for state in job.states():
                yield progress_html(state), session, gr.update(), gr.update()
            merged = job.result()
    except ReapError as exc:
        yield fail(exc), session, gr.update(), gr.update()
        return
    plan = merged.plan.as_pruning_plan()
    yield (merged_status(plan, merged), use_plan(replace(session, merged=plan), plan), pane_head(plan),
           gr.update(value="merged"))


def on_pick_variant(which: str, session: Session):
    """The right pane, the evaluations and the export switch between the last prune and the last merge."""
    plan = session.merged if which == "merged" else session.pruned
    if plan is None:
        return (fail(ReapError("merge first (the Merge button above)" if which == "merged" else
                               "prune first (the Prune button above)")), session, gr.update())
    if plan is session.plan:
        return gr.update(), session, gr.update()
    status = pruned_status(plan)
    if plan.extra.get("merge"):
        try:
            status = merged_status(plan, session_view(replace(session, plan=plan)))
        except ReapError as exc:
            return fail(exc), session, gr.update()
    return status, use_plan(session, plan), pane_head(plan)


# --- 5. chat side by side --------------------------------------------------------------------

def to_model_history(chat: list[dict]) -> list[dict]:
    """The conversation the model sees: user turns and answers, not the folded reasoning."""
    return [{"role": m["role"], "content": m["content"]} for m in chat
            if isinstance(m.get("content"), str) and not (m.get("metadata") or {}).get("title")]


def render_answer(raw: str) -> list[dict]:
    reasoning, answer = split_reasoning(raw)
    msgs = [{"role": "assistant", "content": reasoning, "metadata": {"title": "Reasoning", "status": "done"}}] \
        if reasoning else []
    return msgs + [{"role": "assistant", "content": answer or "…"}]


def require_plan(session: Session, why: str):
    """The session's plan, or the message naming the first step still missing."""
    session_stats(session)
    if session.plan is None:
        raise ReapError(f"prune first (step 4): {why}")
    return session.plan


@gpu
def on_chat(message, image, chat_orig, chat_pruned, temperature, top_p, max_new_tokens, thinking, session: Session,
            request: gr.Request):
    if not message or not message.strip():
        yield chat_orig, chat_pruned, "Type a message first.", gr.update()
        return
    try:
        loaded = session_model(session)
        require_plan(session, "the right pane shows the pruned model")
        check_prompt_length(message, LIMITS.prompt_chars)
    except ReapError as exc:
        yield chat_orig, chat_pruned, fail(exc), gr.update()  # keep the typed message
        return
    user = {"role": "user", "content": message}
    histories = [to_model_history(chat_orig) + [user], to_model_history(chat_pruned) + [user]]
    settings = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                  top_p=float(top_p), thinking=bool(thinking) and thinking_switch(loaded).enabled)
    base = [list(chat_orig) + [user], list(chat_pruned) + [user]]
    stop = SIGNALS.start(session_id(request), "chat")   # Stop and Clear set it
    try:
        view = session_view(session)
        for texts in stream_variants(loaded, histories, [None, view], settings, image=image, stop=stop,
                                     max_prompt_tokens=LIMITS.prompt_tokens):
            if stop.is_set():
                return
            yield base[0] + render_answer(texts[0]), base[1] + render_answer(texts[1]), "", ""
    except ReapError as exc:
        yield chat_orig, chat_pruned, fail(exc), gr.update()
    finally:
        stop.set()


# --- 6. evaluate -------------------------------------------------------------------------------

def sweep_caption(result, stats: ExpertStats, source: str) -> str:
    h = result.heldout
    labels = ", ".join(get_criterion(c).label for c in result.criteria)
    return (f"**Measured:** {len(result.criteria)} criteria ({labels}) × {len(result.ratios)} ratios "
            f"({result.ratios[0]:.0%}–{result.ratios[-1]:.0%} of {result.num_experts} experts pruned per layer), "
            f"each prune made from the statistics of {calibration_line(stats)}; scored on {h.get('sequences')} "
            f"held-out sequences that were never calibration samples" + (f" ({source})." if source else "."))


def on_fidelity(criteria, metric, ratio, session: Session, use_precomputed: bool = True, request: gr.Request = None):
    stop = SIGNALS.start(session_id(request), "work")
    cancelled = stop_check(stop, "fidelity sweep")
    try:
        loaded, stats = session_model(session), session_stats(session)
        if not criteria:
            raise ReapError("choose at least one criterion to sweep")
        merges = [c.removeprefix(MERGE_PREFIX) for c in criteria if c.startswith(MERGE_PREFIX)]
        criteria = [c for c in criteria if not c.startswith(MERGE_PREFIX)]
        heldout = build_heldout(defaults_for(loaded)["heldout"], loaded.tokenizer,
                                calibration_exclusion(stats, loaded.tokenizer, allow_local_files=not MODE.public))
        ratios = feasible_ratios(loaded.num_experts, loaded.top_k)
        result = (precomputed_sweep(loaded, stats, heldout, ratios, criteria, PACK)
                  if use_precomputed and not merges else None)
        source = "precomputed" if result is not None else ""
        if result is None:
            clock = ProgressClock("Fidelity sweep", "forward passes")

            def report(done, total):
                cancelled()
                clock.update(done, total)

            def sweep():
                signals = None
                if merges:   # one more pass of the calibration data, once per statistics (MergeCache)
                    signals = MERGES.signals(loaded, stats, lambda done, total, tokens: (
                        cancelled(), clock.update(done, total, "merge signals: one more pass of the calibration "
                                                               "data")), allow_local_files=not MODE.public)
                return FIDELITY.get_or_run(loaded, stats, heldout, ratios=ratios, criteria=criteria, progress=report,
                                           merges=merges, signals=signals)

            with Background(sweep, clock, stop) as job:
                for state in job.states():
                    yield progress_html(state), gr.update(), session
                result, cached = job.result()
            source = "from cache" if cached else f"measured live in {result.timing.get('seconds', 0):.1f} s"
    except ReapError as exc:
        yield fail(exc), gr.update(), session
        return
    evals = {**session.evals, "fidelity": result}
    caption = sweep_caption(result, stats, "" if source == "precomputed" else source)
    yield (ok(f"Swept {len(result.ratios)} ratios × {len(result.criteria)} criteria.") + " " + caption
           + (precomputed_note() if source == "precomputed" else "")
           + "\n\n" + result.format_table(metric),
           fidelity_figure(result, metric, ratio), replace(session, evals=evals))


def on_fidelity_redraw(metric, ratio, session: Session):
    result = session.evals.get("fidelity")
    return fidelity_figure(result, metric, ratio) if result is not None else gr.update()


def on_quality(kind: str, session: Session, use_precomputed: bool, request: gr.Request):
    what = "Generation quality" if kind == "generation" else "Task accuracy"
    stop = SIGNALS.start(session_id(request), "work")
    cancelled = stop_check(stop, what.lower())
    try:
        loaded = session_model(session)
        plan = require_plan(session, "the evaluation compares the original with the pruned view")
        stats = session_stats(session)
        report = precomputed_eval(kind, loaded, stats, plan, PACK) if use_precomputed else None
        source = "precomputed" if report is not None else ""
        if report is None:
            clock = ProgressClock(what, "answers")

            def step(done, total):
                cancelled()
                clock.update(done, total)

            run = generation_quality if kind == "generation" else task_accuracy
            view = session_view(session)
            with Background(lambda: run(loaded, view, progress=step), clock, stop) as job:
                for state in job.states():
                    yield progress_html(state), session
                report = job.result()
    except ReapError as exc:
        yield fail(exc), session
        return
    caption = f"**Measured:** {plan_caption(plan, stats)} — against the original, same prompts, greedy."
    if kind == "generation":
        s = report.settings
        caption += (f" {s.get('prompts')} prompts, up to {s.get('max_new_tokens')} new tokens each.\n\n"
                    + report.format_table() + "\n\n*" + GENERATION_DEFINITIONS + "*")
    else:
        s = report.settings
        caption += (f" {report.suite} suite: {s.get('items')} items ({s.get('items_per_domain')} per domain), "
                    f"checked by a program.\n\n" + report.format_table())
    yield caption + (precomputed_note() if source == "precomputed" else ""), \
        replace(session, evals={**session.evals, kind: report})


@gpu
def on_generation_quality(session: Session, use_precomputed: bool = True, request: gr.Request = None):
    yield from on_quality("generation", session, use_precomputed, request)


@gpu
def on_task_accuracy(session: Session, use_precomputed: bool = True, request: gr.Request = None):
    yield from on_quality("tasks", session, use_precomputed, request)


def eval_results_for_card(session: Session) -> dict | None:
    evals, plan = session.evals, session.plan
    if not evals or plan is None:
        return None
    return card_eval_results(plan, fidelity=evals.get("fidelity"), generation=evals.get("generation"),
                             tasks=evals.get("tasks"))


# --- 7. export & push ------------------------------------------------------------------------

EXPORT_ROOT = Path(os.environ.get("REAP_STUDIO_EXPORTS", "exports"))  # local mode's default place
ZIP_LIMIT = 2_000_000_000  # offer a single-file download for small models only


def default_export_dir(session: Session) -> Path:
    """exports/<model>-<criterion or merge method>-<percent>, or -2, -3, … when taken: never a silent replace."""
    plan = session.plan
    return new_output_dir(EXPORT_ROOT, session.model_id or "model", output_label(plan), plan.compression_ratio)


def export_target(out_dir: str, replace_earlier: bool, session: Session, sid: str) -> Path:
    """Public: the session's own folder, never a path the visitor names. Local: the path given (an
    earlier export there is replaced only when asked; anything else is refused by the exporter)."""
    plan = session.plan
    if MODE.public:
        if (out_dir or "").strip():
            raise ReapError("server paths are not accepted here: each session exports into its own folder — "
                            "leave the folder empty and download the zip")
        return WORK.export_dir(sid, session.model_id or "model", output_label(plan), plan.compression_ratio)
    if not (out_dir or "").strip():
        return default_export_dir(session)
    path = Path(out_dir.strip())
    if (path / PLAN_FILE).is_file() and not replace_earlier:
        raise ReapError(f"`{path}` already holds an export: tick **Replace an earlier export** to overwrite it, "
                        "or leave the folder empty for a new name")
    return path


@gpu
def on_export(out_dir: str, session: Session, replace_earlier: bool = False, request: gr.Request = None):
    sid = session_id(request)
    stop = SIGNALS.start(sid, "work")
    cancelled = stop_check(stop, "export")
    try:
        loaded = session_model(session)
        stats = session_stats(session)
        plan = require_plan(session, "the export writes the pruned view you chatted with")
        target = export_target(out_dir, bool(replace_earlier), session, sid)
        replacing = target.exists()   # allowed only for an earlier export of ours (asked for, locally)
        clock = ProgressClock("Export", "%")

        def report(fraction, message):
            cancelled()
            clock.fraction(fraction, message)

        view = session_view(session)
        if plan.extra.get("merge"):
            write = lambda: export_merged(loaded, view, stats, target,  # noqa: E731
                                          eval_results=eval_results_for_card(session), progress=report)
        else:
            write = lambda: export_pruned(loaded, plan, stats, target,  # noqa: E731
                                          eval_results=eval_results_for_card(session), progress=report)
        with Background(write, clock, stop) as job:
            for state in job.states():
                yield progress_html(state), session, gr.update()
            result = job.result()
    except ReapError as exc:
        yield fail(exc), session, gr.update()
        return
    earlier = ""
    if MODE.public:  # one export per session on the server: the earlier ones go
        for other in result.path.parent.iterdir():
            if other != result.path:
                shutil.rmtree(other, ignore_errors=True)
                replacing = True
        earlier = " It replaces this session's earlier export." if replacing else ""
    elif replacing:
        earlier = " It replaced the earlier export in that folder, as asked."
    archive = gr.update(visible=False)
    if result.bytes < ZIP_LIMIT:
        zip_path = shutil.make_archive(str(WORK.scratch_dir(sid, "zip") / result.path.name), "zip", result.path)
        archive = gr.update(value=zip_path, visible=True)
    WORK.sweep(keep=sid)
    check = describe_verification(result.verification) if result.max_abs_diff is not None else "not verified"
    where = f"`{result.path.name}` (this session's folder)" if MODE.public else f"`{result.path}`"
    verdict = "verified" if result.max_abs_diff is not None else "check"
    yield (ok(f"Exported to {where} — {plan_caption(plan)}; {len(result.files)} files, {result.bytes / 1e6:.1f} MB, "
              f"{result.seconds:.1f} s; {verdict}: {check}.{earlier}"),
           replace(session, export=ExportRecord(str(result.path), result.max_abs_diff is not None,
                                                plan_summary(plan))), archive)


def on_push(repo_id: str, private: bool, session: Session, request: gr.Request,
            oauth_token: gr.OAuthToken | None = None):
    # Public mode: the visitor's OAuth token or nothing (never the server's HF_TOKEN). Locally: the token
    # saved by `hf auth login` when no sign-in is given.
    token = oauth_token.token if oauth_token is not None and oauth_token.token else None
    try:
        export = session.export
        if not export:
            raise ReapError("export first: the push uploads the verified export folder of this session")
        if MODE.public and not WORK.owns(session_id(request), export.path):
            raise ReapError("export first: the push uploads the verified export folder of this session")
        if not export.verified:
            raise ReapError("this export was not verified: export again before pushing")
        if MODE.public and token is None:
            raise ReapError("sign in with the **Sign in with Hugging Face** button to push: on a public server "
                            "only your own account is used" if ON_SPACE else
                            "pushing from a public server needs a Hugging Face sign-in, which only a Space "
                            "offers: download the zip and push it with `hf upload` instead")
        clock = ProgressClock("Push", "%")
        with Background(lambda: push_folder(export.path, repo_id, token=token, private=bool(private),
                                            allow_saved_token=not MODE.public, progress=clock.fraction),
                        clock, threading.Event()) as job:
            for state in job.states():
                yield progress_html(state)
            url = job.result()
    except ReapError as exc:
        yield fail(exc)
        return
    yield ok(f"Pushed to [{url}]({url}) — {export.plan}")


def on_session_end(request: gr.Request):
    """The browser tab closed: its files and stop flags go (statistics and models in memory stay cached)."""
    sid = session_id(request)
    SIGNALS.forget(sid)
    DRAWN.forget(sid)
    WORK.remove_session(sid)


# --- layout ----------------------------------------------------------------------------------

CSS = """
.step-title h2 {margin-bottom: 0}
.muted {opacity: 0.75}
.reap-progress {margin: 6px 0; min-width: 0}
.reap-progress-track {height: 14px; border-radius: 7px; background: var(--neutral-200, #e5e7eb); overflow: hidden}
.reap-progress-fill {height: 100%; background: var(--primary-500, #6366f1); transition: width 0.4s ease}
.reap-progress-text {font-size: 0.9em; margin-top: 4px; overflow-wrap: anywhere}
/* result tables scroll sideways inside their box instead of wrapping one character per line */
.result table {display: block; overflow-x: auto; max-width: 100%; width: fit-content}
.result th, .result td {white-space: nowrap}
/* long code answers wrap in the chat panes instead of scrolling sideways */
.chat-pane pre, .chat-pane code {white-space: pre-wrap !important; overflow-wrap: anywhere; word-break: break-word}
#heatmap-click {display: none}
.model-card th:first-child, .model-card td:first-child {white-space: nowrap}
#size-table th, #size-table td {white-space: normal}   /* three short columns: wrap, never hide "Pruned" */
.model-card td:last-child {overflow-wrap: anywhere}
@media (max-width: 640px) {
  /* gradio groups neighbouring inputs of a row into one .form: stack inside it too */
  .phone-stack > *, .phone-stack > .form > * {min-width: 100% !important; flex-basis: 100% !important}
  .phone-stack > .form {flex-wrap: wrap !important}
  .result table, .model-card table {font-size: 0.85em}
  .result th, .result td {padding: 4px 6px !important}
}
"""

INTRO = """# REAP Studio
Compress a Mixture-of-Experts LLM by **removing experts**, and see what it costs. REAP
(*Router-weighted Expert Activation Pruning*, Lasby et al., ICLR 2026) scores each expert by the
mean, over the calibration tokens routed to it, of **gate × ‖expert output‖**, and removes the
lowest-scoring experts in every layer. Work top to bottom: load → calibrate → look → slide → prune → chat →
evaluate → export."""

# The page tells the server which heatmap cell was clicked: Plotly's own click event on the two
# heatmaps (saliency and category views) writes "L<layer>:<expert>" into a hidden gr.HTML and fires
# its submit event. Plots are redrawn on every slider move, so new plot elements are bound as they appear.
CLICK_JS = """
const bind = () => {
  for (const id of ["saliency-heatmap", "category-heatmap"]) {
    const gd = document.querySelector("#" + id + " .js-plotly-plot");
    if (!gd || !gd.on || gd.__reapClick) continue;
    gd.__reapClick = true;
    gd.on("plotly_click", (ev) => {
      const pt = ev && ev.points && ev.points[0];
      const meta = pt && pt.data && pt.data.meta;
      if (!meta) return;
      const layer = meta.kind === "saliency" ? pt.y : meta.layer;
      const expert = meta.kind === "saliency" ? pt.customdata[0] : pt.x;
      props.value = layer + ":" + Math.round(Number(expert));
      trigger("submit");
    });
  }
};
bind();
setInterval(bind, 700);
"""


def example_labels() -> list[str]:
    """'code: original right; wrong at REAP 50%, 75%' from the answers the demo pack measured."""
    measured = {e["prompt"]: e["answers"] for e in (PACK.examples if PACK else [])}
    labels = []
    for ex in EXAMPLES:
        answers = measured.get(ex.prompt)
        if not answers:
            labels.append(ex.domain)
            continue
        orig = answers.get("original", {}).get("correct")
        wrong = [name.replace("REAP ", "") for name, a in answers.items() if name != "original" and not a["correct"]]
        labels.append(f"{ex.domain}: original {'right' if orig else 'wrong'}"
                      + (f"; wrong at REAP {', '.join(wrong)}" if wrong else "; right at every ratio tried"))
    return labels


GENERAL_EXAMPLES = ["Explain in two sentences why the sky is blue.",
                    "Write a Python function that returns the n-th Fibonacci number.",
                    "A train leaves at 14:10 and arrives at 16:45. How long is the trip?"]


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="REAP Studio", delete_cache=(1800, 3600)) as demo:  # gradio's copies of our files too
        session = gr.State(Session())
        gr.Markdown(INTRO)

        gr.Markdown("## 1 · Model")
        with gr.Row():
            model_id = gr.Dropdown(MODEL_CHOICES, value=DEFAULT_MODEL, allow_custom_value=True, scale=4,
                                   label="Model: pick one, or type a Hub id" + ("" if MODE.public else " / local folder"))
            load_btn = gr.Button("Load", variant="primary", scale=1)
        model_info = gr.Markdown("No model loaded yet.", elem_classes="model-card", elem_id="model-card")

        gr.Markdown("## 2 · Calibrate")
        gr.Markdown("REAP needs to see the model at work: a small set of prompts is run through it once, and "
                    "for every routed (token, expert) pair the gate and the expert's output norm are recorded.",
                    elem_classes="muted")
        with gr.Row():
            categories = gr.CheckboxGroup(builtin_categories(), label="Built-in categories", scale=3)
            with gr.Column(scale=1, min_width=160):
                samples = gr.Number(16, precision=0, minimum=1, label="Samples per category")
                max_tokens = gr.Slider(32, 2048, value=256, step=32, label="Max tokens per sample")
        with gr.Row():
            hub_spec = gr.Textbox(label="…or a Hub dataset (name[subset](split):N)", placeholder="org/data(train):64")
            upload = gr.File(label=f"…or upload .jsonl / .txt (up to {LIMITS.upload.upper()})",
                             file_types=[".jsonl", ".txt"], type="filepath", height=120)
        use_precomputed = gr.Checkbox(False, visible=False,
                                      label="Use precomputed results (bundled model, default calibration: instant)",
                                      info="Statistics, the fidelity sweep and the evaluations of REAP 25/50/75% were "
                                           "measured once by scripts/precompute_demo.py on exactly this model and "
                                           "data; untick to measure everything live")
        with gr.Row():
            calib_btn = gr.Button("Run calibration", variant="primary", scale=3)
            calib_cancel = gr.Button("Cancel", scale=1)
        calib_status = gr.Markdown(elem_classes="result", elem_id="calib-status")
        with gr.Row():
            stats_file = gr.File(label="Statistics (download to reuse)", interactive=False, height=150, visible=False)
            stats_upload = gr.File(label="Upload statistics saved earlier (skips calibration)", file_types=[".npz"],
                                   type="filepath", height=150)

        gr.Markdown("## 3 · Saliency — which experts matter")
        with gr.Row(elem_classes="phone-stack"):
            criterion = gr.Dropdown(CRITERION_CHOICES, value="reap", label="Criterion", min_width=160)
            category = gr.Dropdown([ALL_CATEGORIES], value=ALL_CATEGORIES, min_width=160,
                                   label="Score experts on calibration category",
                                   info="Also what Prune (step 4) uses")
            sort_experts = gr.Checkbox(False, label="Sort each layer by score", min_width=160)
        heatmap = gr.Plot(label="Saliency heatmap", show_label=False, elem_id="saliency-heatmap")
        heat_caption = gr.Markdown(elem_classes="muted", elem_id="heat-caption")
        click_bridge = gr.HTML("", html_template="<span></span>", js_on_load=CLICK_JS, elem_id="heatmap-click",
                               container=False, padding=False)
        with gr.Group(elem_id="expert-inspector"):
            gr.Markdown("### Expert inspector")
            expert_info = gr.Markdown("Click a cell of the heatmap above (or of the category view below) to see the "
                                      "calibration tokens where that expert fired hardest.", elem_classes="result",
                                      elem_id="expert-info")
            with gr.Accordion("…or pick an expert by number", open=False):
                with gr.Row(equal_height=True):
                    layer_pick = gr.Dropdown([], label="Layer", allow_custom_value=True, min_width=120)
                    expert_pick = gr.Number(0, precision=0, minimum=0, label="Expert id", min_width=120)
                    expert_btn = gr.Button("Show its top tokens", min_width=120)

        gr.Markdown("### Which experts serve which category")
        gr.Markdown("Each row is a calibration category, each column an expert of one layer; colour = the share of "
                    "that category's tokens the router sent to the expert (a row adds up to top-k). **Look for "
                    "columns that are bright in one row only**: specialists. A calibration without that category "
                    "scores them low and prunes them — which is why the calibration data matters.",
                    elem_classes="muted")
        spec_layer = gr.Radio([], label="Layer", elem_id="category-layer")
        category_plot = gr.Plot(label="Experts by calibration category", show_label=False, elem_id="category-heatmap")
        with gr.Accordion("Do two criteria prune the same experts?", open=False):
            with gr.Row():
                crit_a = gr.Dropdown(CRITERION_CHOICES, value="reap", label="Criterion A", min_width=140)
                crit_b = gr.Dropdown(CRITERION_CHOICES, value="frequency", label="Criterion B", min_width=140)
            compare_plot = gr.Plot(label="Experts pruned by both criteria, per layer", show_label=False,
                                   elem_id="compare-plot")

        gr.Markdown("## 4 · Compression")
        with gr.Row(elem_classes="phone-stack"):
            ratio = gr.Slider(0.05, 0.95, value=0.25, step=0.05, label="Compression ratio (share of experts removed)",
                              info="A layer must keep at least top-k experts; the table says when a ratio goes too far",
                              scale=3, min_width=200)
            protect = gr.Checkbox(False, label="Protect super experts (outlier activations)", scale=1, min_width=160)
        size_table = gr.Markdown(elem_classes="result", elem_id="size-table")
        prune_btn = gr.Button("Prune (masked view — instant)", variant="primary")
        with gr.Accordion("Prune or merge? Merge the experts instead, at the same ratio", open=False,
                          elem_id="merge-box"):
            gr.Markdown("Merging keeps every expert's knowledge in a weighted average of its cluster instead of "
                        "dropping the lowest-scoring ones (HC-SMoE, M-SMoE, REAM: the REAP paper says pruning wins "
                        "for generation, REAM says merging does). Same expert count, same checkpoint shape. The "
                        "merged experts are a copy in memory beside the original weights (their size is shown); "
                        "the first merge runs the calibration data through the model once more.",
                        elem_classes="muted")
            with gr.Row(elem_classes="phone-stack"):
                merge_method = gr.Dropdown(MERGE_CHOICES, value="ream", label="Merge method", scale=2, min_width=160)
                merge_btn = gr.Button("Merge", scale=1, min_width=120)
            variant_pick = gr.Radio([("the pruned model", "pruned"), ("the merged model", "merged")], value="pruned",
                                    label="Right chat pane, evaluation and export use", elem_id="variant-pick")
        prune_status = gr.Markdown(elem_id="prune-status")

        gr.Markdown("## 5 · Chat — original vs pruned (or merged), one copy of the weights")
        with gr.Row():   # pane titles above the panes: a chatbot's own label floats over its messages
            with gr.Column(min_width=280):
                gr.Markdown("**Original** — all experts")
                chat_orig = gr.Chatbot(label="Original — all experts", show_label=False, height=380,
                                       elem_classes="chat-pane", elem_id="chat-original",
                                       placeholder="Prune (step 4), then send a message: this pane uses every expert")
            with gr.Column(min_width=280):
                pruned_head = gr.Markdown("**Pruned** — prune in step 4", elem_id="pruned-head")
                chat_pruned = gr.Chatbot(label="Pruned", show_label=False, height=380, elem_classes="chat-pane",
                                         elem_id="chat-pruned",
                                         placeholder="…and this one the pruned view, from the same weights")
        with gr.Row():
            prompt = gr.Textbox(label="Message (goes to both)", scale=4, autofocus=False)
            image = gr.Image(type="pil", label="Image (both panes)", visible=False, scale=1, elem_id="chat-image")
        with gr.Row():
            send_btn = gr.Button("Send", variant="primary", min_width=80)
            stop_btn = gr.Button("Stop", min_width=80)
            clear_btn = gr.Button("Clear", min_width=80)
        chat_status = gr.Markdown()
        with gr.Accordion("Generation settings", open=False):
            with gr.Row():
                temperature = gr.Slider(0, 1.5, value=0, step=0.05, label="Temperature (0 = greedy)", min_width=160)
                top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="Top-p", min_width=160)
                max_new = gr.Slider(16, 1024, value=160, step=16, label="Max new tokens", min_width=160)
                thinking = gr.Checkbox(False, label="Thinking", min_width=160,
                                       info="The model's reasoning block, where its family has one")
        with gr.Column(visible=DEFAULT_MODEL == BUNDLED_MODEL) as toy_examples:
            gr.Examples([e.prompt for e in EXAMPLES], inputs=prompt, example_labels=example_labels(),
                        label="Example prompts the bundled model answers right (labels: what REAP pruning did to the "
                              "answer, default calibration)")
        toy_note = gr.Markdown("The bundled model " + KNOWS[3:] + " General prompts are hidden while it is loaded.",
                               elem_classes="muted", visible=DEFAULT_MODEL == BUNDLED_MODEL)
        with gr.Column(visible=DEFAULT_MODEL != BUNDLED_MODEL) as general_examples:
            gr.Examples(GENERAL_EXAMPLES, inputs=prompt, label="Example prompts")

        gr.Markdown("## 6 · Evaluate — what does pruning cost?")
        gr.Markdown("**Fidelity**: on held-out prompts (never the calibration samples), how far the pruned model's "
                    "next-token distribution moves from the original's, for many ratios and criteria at once "
                    "(masked views: one calibration, no reloads). **Generation quality** and **task accuracy** "
                    "compare the original with the current prune.", elem_classes="muted")
        with gr.Row():
            sweep_criteria = gr.CheckboxGroup(SWEEP_CHOICES, value=list(DEFAULT_CRITERIA),
                                              label="Criteria (and merge methods) to sweep", scale=3)
            metric = gr.Dropdown([(title, name) for name, (title, _) in METRICS.items()], value="kl",
                                 label="Metric", scale=1, min_width=160)
        with gr.Row():
            sweep_btn = gr.Button("Run fidelity sweep", variant="primary", scale=3)
            eval_cancel = gr.Button("Cancel", scale=1)
        fidelity_status = gr.Markdown(elem_classes="result", elem_id="fidelity-status")
        fidelity_plot = gr.Plot(label="Fidelity vs compression ratio (the dashed line is the current ratio)",
                                show_label=False, elem_id="fidelity-plot")
        with gr.Row():
            quality_btn = gr.Button("Generation quality (current prune)", min_width=160)
            tasks_btn = gr.Button("Task accuracy (current prune)", min_width=160)
        quality_table = gr.Markdown(elem_classes="result", elem_id="quality-table")
        tasks_table = gr.Markdown(elem_classes="result", elem_id="tasks-table")
        with gr.Accordion("Does the pruned model still see? Vision under pruning (bundled model, measured)",
                          open=False, elem_id="vision-pruning"):
            gr.Markdown(bundled_report_markdown(), elem_classes="result")

        gr.Markdown("## 7 · Export & push")
        gr.Markdown("The export slices the pruned experts out of the checkpoint (shard by shard, so a 52 GB model "
                    "never has to fit in memory), writes the model card, `reap_scores.json` and a recipe, "
                    "reloads the result and checks its logits against the pruned view before anything is "
                    "published.", elem_classes="muted")
        with gr.Row(elem_classes="phone-stack"):
            export_dir = gr.Textbox(label="Output folder (empty = a new exports/<model>-<criterion>-<percent>)",
                                    scale=3, visible=not MODE.public)  # public: each session's own folder
            replace_export = gr.Checkbox(False, label="Replace an earlier export in that folder", scale=1,
                                         visible=not MODE.public, min_width=160)
        with gr.Row():
            export_btn = gr.Button("Export pruned checkpoint", variant="primary", scale=3)
            export_cancel = gr.Button("Cancel", scale=1)
        export_status = gr.Markdown(elem_classes="result", elem_id="export-status")
        export_zip = gr.File(label="Download the exported folder (.zip)", visible=False, interactive=False)
        with gr.Row(elem_classes="phone-stack"):
            if ON_SPACE:  # Gradio's local LoginButton refuses to start without a saved token: Spaces only
                gr.LoginButton(scale=1)
            elif MODE.public:
                gr.Markdown("Pushing from a public server needs a Space sign-in: download the zip instead.",
                            elem_classes="muted")
            else:
                gr.Markdown("Locally the push uses the token saved by `hf auth login`.", elem_classes="muted")
            repo_name = gr.Textbox(label="Hub repo (user/name, or name for your account)", scale=3, min_width=200)
            private_repo = gr.Checkbox(True, label="Private", scale=1, min_width=100)
            push_btn = gr.Button("Push to the Hub", scale=1, min_width=120)
        push_status = gr.Markdown(elem_id="push-status")
        gr.Markdown(MODE.footer(), elem_classes="muted", elem_id="server-mode")

        # --- events ---
        view_inputs = [criterion, ratio, protect, sort_experts, category, session]
        view_outputs = [heatmap, size_table, category, prune_status, heat_caption]
        private = dict(api_visibility="private")
        compare = dict(fn=on_compare, inputs=[crit_a, crit_b, ratio, session], outputs=compare_plot, **private)
        controls = dict(fn=on_model_controls, inputs=session,
                        outputs=[thinking, toy_examples, general_examples, toy_note, use_precomputed], **private)
        own_progress = dict(show_progress="hidden")   # these draw their own bar in their status

        def refresh_pickers(session):
            stats = session.stats
            layers = [f"L{i}" for i in stats.layer_indices] if stats else []
            first = layers[0] if layers else None
            return (gr.update(choices=layers, value=first), gr.update(choices=layers, value=first),
                    on_category_view(first, session) if stats else gr.update())

        pickers = dict(fn=refresh_pickers, inputs=session, outputs=[layer_pick, spec_layer, category_plot], **private)

        # loads have their own queue: a cached model loads at once, even while a calibration runs
        load_btn.click(on_load_model, [model_id, session], [model_info, session, categories, image],
                       api_name="load_model", concurrency_limit=1, concurrency_id="load").then(**controls)
        if DEFAULT_MODEL == BUNDLED_MODEL:  # small and local: ready to calibrate the moment the page opens
            demo.load(on_load_model, [model_id, session], [model_info, session, categories, image],
                      api_visibility="private").then(**controls)

        def cancel_work(request: gr.Request):
            SIGNALS.stop(session_id(request), "work")

        for button in (calib_cancel, eval_cancel, export_cancel):
            button.click(cancel_work, None, None, **({"api_name": "cancel"} if button is calib_cancel else private))
        calib_btn.click(on_calibrate, [categories, samples, hub_spec, upload, max_tokens, session, use_precomputed],
                        [calib_status, session, stats_file], api_name="calibrate", concurrency_limit=1,
                        concurrency_id="model", **own_progress
                        ).then(on_view, view_inputs, view_outputs, api_name="view").then(**pickers).then(**compare)
        stats_upload.upload(on_upload_stats, [stats_upload, session], [calib_status, session],
                            api_name="upload_stats").then(on_view, view_inputs, view_outputs, **private).then(
            **pickers).then(**compare)
        for control in (criterion, protect, sort_experts, category):
            control.change(on_view, view_inputs, view_outputs, show_progress="hidden", **private)
        # the ratio's own events skip repeats (DrawnViews); the API's /view and the other triggers always draw
        ratio.change(on_ratio_view, view_inputs, view_outputs, show_progress="hidden", trigger_mode="always_last",
                     **private)
        expert_btn.click(on_expert, [layer_pick, expert_pick, session], expert_info, api_name="expert")
        for control in (layer_pick, expert_pick):
            control.input(on_expert, [layer_pick, expert_pick, session], expert_info, **private)
        click_bridge.submit(on_heatmap_click, [click_bridge, session], [layer_pick, expert_pick, expert_info],
                            show_progress="hidden", **private)
        spec_layer.change(on_category_view, [spec_layer, session], category_plot, show_progress="hidden", **private)
        for control in (crit_a, crit_b):
            control.change(show_progress="hidden", **compare)
        ratio.change(on_ratio_compare, compare["inputs"], compare["outputs"], show_progress="hidden", **private)
        prune_btn.click(on_prune, [criterion, ratio, protect, category, session],
                        [prune_status, session, pruned_head, variant_pick], api_name="prune")
        merge_btn.click(on_merge, [merge_method, ratio, session], [prune_status, session, pruned_head, variant_pick],
                        api_name="merge", concurrency_limit=1, concurrency_id="model", **own_progress)
        variant_pick.input(on_pick_variant, [variant_pick, session], [prune_status, session, pruned_head],
                           api_name="pick_variant")
        chat_inputs = [prompt, image, chat_orig, chat_pruned, temperature, top_p, max_new, thinking, session]
        chat_outputs = [chat_orig, chat_pruned, chat_status, prompt]
        send = send_btn.click(on_chat, chat_inputs, chat_outputs, api_name="chat",
                              concurrency_limit=2, concurrency_id="chat")
        submit = prompt.submit(on_chat, chat_inputs, chat_outputs, concurrency_limit=2, concurrency_id="chat",
                               **private)

        def stop_chat(request: gr.Request):
            SIGNALS.stop(session_id(request), "chat")

        def clear_chat(request: gr.Request):
            stop_chat(request)
            return [], [], ""

        stop_btn.click(stop_chat, None, None, cancels=[send, submit], api_name="stop")
        clear_btn.click(clear_chat, None, [chat_orig, chat_pruned, chat_status], cancels=[send, submit],
                        api_name="clear")
        sweep_btn.click(on_fidelity, [sweep_criteria, metric, ratio, session, use_precomputed],
                        [fidelity_status, fidelity_plot, session], api_name="fidelity", concurrency_limit=1,
                        concurrency_id="model", **own_progress)
        metric.change(on_fidelity_redraw, [metric, ratio, session], fidelity_plot, show_progress="hidden", **private)
        ratio.change(on_ratio_fidelity, [metric, ratio, session], fidelity_plot, show_progress="hidden", **private)
        quality_btn.click(on_generation_quality, [session, use_precomputed], [quality_table, session],
                          api_name="generation_quality", concurrency_limit=1, concurrency_id="model", **own_progress)
        tasks_btn.click(on_task_accuracy, [session, use_precomputed], [tasks_table, session],
                        api_name="task_accuracy", concurrency_limit=1, concurrency_id="model", **own_progress)
        export_btn.click(on_export, [export_dir, session, replace_export], [export_status, session, export_zip],
                         api_name="export", concurrency_limit=1, concurrency_id="model", **own_progress)
        push_btn.click(on_push, [repo_name, private_repo, session], push_status, api_name="push", concurrency_limit=1,
                       **own_progress)
        demo.unload(on_session_end)
    return demo


def main() -> None:
    WORK.clean_start()  # sessions of an earlier run are gone; so are their files
    demo = build_demo()
    demo.queue(default_concurrency_limit=2, max_size=32)
    demo.launch(theme=gr.themes.Soft(), css=CSS, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                max_file_size=LIMITS.upload)


if __name__ == "__main__":
    main()
