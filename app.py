"""REAP Studio — see and feel what expert pruning does to a Mixture-of-Experts LLM.

UI wiring only: every handler is a few lines around one reap_core function; engine errors
(ReapError) become a short message in the page and the app keeps working. Reads top to bottom
as the method: 1 model -> 2 calibrate -> 3 saliency -> 4 compression -> 5 chat -> 6 evaluate -> 7 export.

    python app.py                       # opens on the bundled model, offline, CPU is fine
    REAP_STUDIO_MODEL=google/gemma-4-26b-a4b-it python app.py   # default model on a GPU box
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr

from reap_core import toy_tasks
from reap_core.calibration import (LOCAL_LIMITS, PUBLIC_LIMITS, TOY_PREFIX, CalibrationLimits, build_calibration,
                                   builtin_categories)
from reap_core.chat import GenerationSettings, check_prompt_length, split_reasoning, stream_variants
from reap_core.errors import Cancelled, ReapError
from reap_core.eval_defaults import defaults_for
from reap_core.fidelity import DEFAULT_CRITERIA, METRICS, FidelityCache, feasible_ratios
from reap_core.generation_quality import generation_quality
from reap_core.heldout import build_heldout, calibration_exclusion
from reap_core.card import card_eval_results
from reap_core.task_eval import task_accuracy
from reap_core.viz import fidelity_figure  # (evaluate.py split; can join the viz import below)
from reap_core.export import export_pruned
from reap_core.hub import push_folder
from reap_core.model import BUNDLED_MODEL, GEMMA4_26B
from reap_core.plan import PruningPlan, make_plan
from reap_core.saliency import CRITERIA, compute_scores
from reap_core.stats import ExpertStats
from reap_core.studio import (ModelCache, SessionSignals, StatsCache, compression_table, model_card,
                               plan_summary)
from reap_core.viz import category_heatmap, criteria_agreement, saliency_heatmap
from reap_core.workspace import Workspace, detect_mode

try:  # ZeroGPU on Spaces: GPU work must run inside spaces.GPU functions; locally a no-op
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:
    def gpu(fn):
        return fn

DEFAULT_MODEL = os.environ.get("REAP_STUDIO_MODEL", BUNDLED_MODEL)
ON_SPACE = bool(os.environ.get("SPACE_ID"))
MODE = detect_mode()          # public on a Space / beyond loopback / REAP_STUDIO_PUBLIC=1 (reap_core.workspace)
MODEL_CHOICES = [("Bundled toy Gemma 4 MoE — offline, CPU (toy-gemma4-moe)", BUNDLED_MODEL),
                 (f"Gemma 4 26B-A4B — needs a GPU and the Hub ({GEMMA4_26B})", GEMMA4_26B)]
# The models the server's owner offers: in public mode only these may be read with the server's own
# token (e.g. a gated Gemma 4); any other Hub id is read with the visitor's sign-in, or anonymously.
OWNER_MODELS = {BUNDLED_MODEL, GEMMA4_26B, DEFAULT_MODEL}
CRITERION_CHOICES = [(c.label, c.name) for c in CRITERIA.values()]
MODELS, STATS, FIDELITY, SIGNALS = ModelCache(), StatsCache(), FidelityCache(), SessionSignals()
WORK = Workspace(os.environ.get("REAP_STUDIO_WORKDIR") or
                 Path(tempfile.gettempdir()) / f"reap-studio-{os.environ.get('GRADIO_SERVER_PORT', '7860')}")


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
    plan: PruningPlan | None = None
    evals: dict = field(default_factory=dict)   # "fidelity" | "generation" | "tasks" -> result
    export: ExportRecord | None = None


def session_id(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


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


def ok(text: str) -> str:
    return f"✅ {text}"


def fail(exc: Exception) -> str:
    return f"⚠️ **{exc}**"


def session_model(session: Session):
    if not session.model_id:
        raise ReapError("load a model first (step 1)")
    return MODELS.get(session.model_id)


def session_stats(session: Session) -> ExpertStats:
    if session.stats is None:
        raise ReapError("run a calibration first (step 2), or upload a statistics file")
    return session.stats


# --- 1. model --------------------------------------------------------------------------------

def on_load_model(model_id: str, session: Session, request: gr.Request, oauth_token: gr.OAuthToken | None = None,
                  progress=gr.Progress()):
    try:
        progress(0.1, desc=f"Loading {model_id} …")
        loaded = MODELS.get(model_id, token=model_token(model_id, oauth_token), allow_local_paths=not MODE.public)
        progress(0.9, desc="Counting parameters …")
        card = model_card(loaded, *MODELS.counts(loaded)).markdown()
    except ReapError as exc:  # keep the model, statistics and prune already there
        return fail(exc), session, gr.update(), gr.update()
    session = Session(model_id=model_id)
    toy = [c for c in builtin_categories() if c.startswith(TOY_PREFIX)]
    general = [c for c in builtin_categories() if c not in toy]
    default = toy if model_id == BUNDLED_MODEL else general
    return (card, session, gr.update(choices=toy + general, value=default),
            gr.update(visible=loaded.is_multimodal and loaded.processor is not None))


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


@gpu
def on_calibrate(categories, samples, hub_spec, upload, max_tokens, session: Session, request: gr.Request,
                 progress=gr.Progress()):
    sid = session_id(request)
    cancelled = stop_check(SIGNALS.start(sid, "work"), "calibration")
    try:
        loaded = session_model(session)
        spec, local_files = calibration_spec(categories, hub_spec, upload)
        calib = build_calibration(spec, loaded.tokenizer, max_tokens=int(max_tokens),
                                  samples_per_category=int(samples) if samples else None,
                                  limits=LIMITS.calibration, allow_local_files=local_files)
        if calib.num_tokens > LIMITS.calibration_tokens:
            raise ReapError(f"this calibration is {calib.num_tokens:,} tokens; the limit here is "
                            f"{LIMITS.calibration_tokens:,}: choose fewer samples or fewer tokens per sample")

        def report(done, total, tokens):
            cancelled()
            progress(done / total, desc=f"{tokens} / {calib.num_tokens} tokens")

        progress(0, desc=f"0 / {calib.num_tokens} tokens")
        stats, cached = STATS.get_or_observe(loaded, calib, batch_size=4, progress=report)
    except ReapError as exc:  # includes Cancelled: the statistics already there are kept
        return fail(exc), session, gr.update()
    session = replace(session, stats=stats, plan=None, evals={})  # results of other statistics are stale
    path = WORK.scratch_dir(sid, "stats") / f"reap-stats-{stats.fingerprint()}.npz"
    stats.save(path)
    WORK.sweep(keep=sid)
    summary = ", ".join(f"{literal(c)}: {n}" for c, n in zip(stats.categories, stats.tokens_per_category))
    note = " (from cache: same model and calibration data)" if cached else ""
    return ok(f"Observed **{stats.num_tokens} tokens** from {stats.calibration['samples']} samples{note} — "
              f"{summary}"), session, gr.update(value=str(path), visible=True)


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

def on_view(criterion, ratio, protect, sort_experts, category, session: Session):
    """Heatmap + size table for the current settings; runs on every slider move."""
    notice = gr.update()
    current = session.plan
    if current is not None and (current.criterion != criterion or abs(current.compression_ratio - ratio) > 1e-9):
        notice = (f"ℹ️ Chat still uses **{current.criterion}** at {current.compression_ratio:.0%} — press **Prune** "
                  f"to apply {criterion} at {ratio:.0%}")
    try:
        loaded = session_model(session)
        stats = session_stats(session)
        counts, fmt = MODELS.counts(loaded)
        table = compression_table(counts, ratio, fmt)
        cats = None if category in (None, "", "all categories") else [category]
        plan = make_plan(stats, ratio, criterion, protect_super_experts=protect, categories=cats)
        scores = compute_scores(stats, criterion, categories=cats)
        fig = saliency_heatmap(stats, scores, criterion, plan, sort_experts=sort_experts,
                               category=cats[0] if cats else None)
    except ReapError as exc:
        return gr.update(), fail(exc), gr.update(), notice
    return fig, table, gr.update(choices=["all categories"] + stats.categories), notice


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
        return notice_figure(f"⚠️ {exc}")


def on_expert(layer_label, expert, session: Session):
    try:
        stats = session_stats(session)
        row = [f"L{i}" for i in stats.layer_indices].index(layer_label) if layer_label else 0
        expert = int(expert)
        if not 0 <= expert < stats.num_experts:
            raise ReapError(f"expert must be between 0 and {stats.num_experts - 1}")
    except (ReapError, ValueError) as exc:
        return fail(exc)
    items = (stats.top_tokens or [[[]]])[row][expert] if stats.top_tokens else []
    count = int(stats.total("count")[row, expert])
    if not items:
        return f"Expert {expert} of {layer_label} was routed **no** calibration tokens: every data-driven criterion scores it 0."
    lines = [f"**Expert {expert}, layer {layer_label}** — {count} routed tokens. Where gate·‖f‖ peaked "
             "(the highlighted token; the text around it is its context):", "",
             "| gate·‖f‖ | category | context |", "|---:|---|---|"]
    for it in items:
        lines.append(f"| {it['score']:.3g} | {it['category']} | …{literal(it['before'])}<mark>{literal(it['token'])}"
                     f"</mark>{literal(it['after'])}… |")
    return "\n".join(lines)


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
        return notice_figure(f"⚠️ {exc}")


def on_prune(criterion, ratio, protect, category, session: Session):
    try:
        session_model(session)
        stats = session_stats(session)
        cats = None if category in (None, "", "all categories") else [category]
        plan = make_plan(stats, ratio, criterion, protect_super_experts=protect, categories=cats)
    except ReapError as exc:
        return fail(exc), session, gr.update()
    label = f"Pruned — {plan.num_kept}/{plan.num_experts} experts per layer ({plan.criterion}, {plan.compression_ratio:.0%})"
    return (ok("Pruned view active — " + plan_summary(plan) + ". Chat below uses it; the weights are untouched."),
            # the fidelity sweep depends on the statistics only; quality and accuracy on this plan
            replace(session, plan=plan, evals={k: v for k, v in session.evals.items() if k == "fidelity"}),
            gr.update(label=label))


# --- 5. chat side by side --------------------------------------------------------------------

def to_model_history(chat: list[dict]) -> list[dict]:
    """The conversation the model sees: user turns and answers, not the folded reasoning."""
    return [{"role": m["role"], "content": m["content"]} for m in chat
            if isinstance(m.get("content"), str) and not (m.get("metadata") or {}).get("title")]


def render_answer(raw: str) -> list[dict]:
    reasoning, answer = split_reasoning(raw)
    msgs = [{"role": "assistant", "content": reasoning, "metadata": {"title": "💭 Reasoning", "status": "done"}}] \
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
                                  top_p=float(top_p), thinking=bool(thinking))
    base = [list(chat_orig) + [user], list(chat_pruned) + [user]]
    stop = SIGNALS.start(session_id(request), "chat")   # Stop and Clear set it
    try:
        for texts in stream_variants(loaded, histories, [None, session.plan], settings, image=image, stop=stop,
                                     max_prompt_tokens=LIMITS.prompt_tokens):
            if stop.is_set():
                return
            yield base[0] + render_answer(texts[0]), base[1] + render_answer(texts[1]), "", ""
    except ReapError as exc:
        yield chat_orig, chat_pruned, fail(exc), gr.update()
    finally:
        stop.set()


# --- 6. evaluate -------------------------------------------------------------------------------

def on_fidelity(criteria, metric, ratio, session: Session, request: gr.Request, progress=gr.Progress()):
    cancelled = stop_check(SIGNALS.start(session_id(request), "work"), "fidelity sweep")
    try:
        loaded, stats = session_model(session), session_stats(session)
        if not criteria:
            raise ReapError("choose at least one criterion to sweep")
        heldout = build_heldout(defaults_for(loaded)["heldout"], loaded.tokenizer,
                                calibration_exclusion(stats, loaded.tokenizer, allow_local_files=not MODE.public))

        def report(done, total):
            cancelled()
            progress(done / max(total, 1), desc=f"forward passes {done}/{total}")

        result, cached = FIDELITY.get_or_run(
            loaded, stats, heldout, ratios=feasible_ratios(loaded.num_experts, loaded.top_k), criteria=criteria,
            progress=report)
    except ReapError as exc:
        return fail(exc), gr.update(), session
    evals = {**session.evals, "fidelity": result}
    took = "from cache" if cached else f"{result.timing.get('seconds', 0):.1f} s"
    return (ok(f"Swept {len(result.ratios)} ratios × {len(result.criteria)} criteria "
               f"({result.heldout.get('sequences')} held-out sequences, {took})")
            + "\n\n" + result.format_table(metric), fidelity_figure(result, metric, ratio), replace(session, evals=evals))


def on_fidelity_redraw(metric, ratio, session: Session):
    result = session.evals.get("fidelity")
    return fidelity_figure(result, metric, ratio) if result is not None else gr.update()


def on_quality(kind: str, session: Session, request: gr.Request, progress):
    cancelled = stop_check(SIGNALS.start(session_id(request), "work"),
                           "generation quality" if kind == "generation" else "task accuracy")
    try:
        loaded = session_model(session)
        plan = require_plan(session, "the evaluation compares the original with the pruned view")

        def step(done, total):
            cancelled()
            progress(done / max(total, 1), desc=f"{done}/{total}")

        report = (generation_quality if kind == "generation" else task_accuracy)(loaded, plan, progress=step)
    except ReapError as exc:
        return fail(exc), session
    return report.format_table(), replace(session, evals={**session.evals, kind: report})


@gpu
def on_generation_quality(session: Session, request: gr.Request, progress=gr.Progress()):
    return on_quality("generation", session, request, progress)


@gpu
def on_task_accuracy(session: Session, request: gr.Request, progress=gr.Progress()):
    return on_quality("tasks", session, request, progress)


def eval_results_for_card(session: Session) -> dict | None:
    evals, plan = session.evals, session.plan
    if not evals or plan is None:
        return None
    return card_eval_results(plan, fidelity=evals.get("fidelity"), generation=evals.get("generation"),
                             tasks=evals.get("tasks"))


# --- 7. export & push ------------------------------------------------------------------------

EXPORT_ROOT = Path(os.environ.get("REAP_STUDIO_EXPORTS", "exports"))  # local mode's default place
ZIP_LIMIT = 2_000_000_000  # offer a single-file download for small models only


def default_export_dir(session: Session) -> str:
    plan = session.plan
    name = Path(session.model_id or "model").name
    return str(EXPORT_ROOT / (f"{name}-reap-{plan.criterion}-{round(plan.compression_ratio * 100)}" if plan else name))


def export_target(out_dir: str, session: Session, sid: str) -> Path:
    """Public: the session's own folder, never a path the visitor names. Local: the path given (an
    existing folder that is not an earlier export is refused by the exporter, never emptied)."""
    plan = session.plan
    if MODE.public:
        if (out_dir or "").strip():
            raise ReapError("server paths are not accepted here: each session exports into its own folder — "
                            "leave the folder empty and download the zip")
        return WORK.export_dir(sid, session.model_id or "model", plan.criterion, plan.compression_ratio)
    return Path((out_dir or "").strip() or default_export_dir(session))


@gpu
def on_export(out_dir: str, session: Session, request: gr.Request, progress=gr.Progress()):
    sid = session_id(request)
    try:
        loaded = session_model(session)
        stats = session_stats(session)
        plan = require_plan(session, "the export writes the pruned view you chatted with")
        target = export_target(out_dir, session, sid)
        result = export_pruned(loaded, plan, stats, target, eval_results=eval_results_for_card(session),
                               progress=lambda fraction, message: progress(fraction, desc=message))
    except ReapError as exc:
        return fail(exc), session, gr.update()
    if MODE.public:  # one export per session on the server: the earlier ones go
        for other in result.path.parent.iterdir():
            if other != result.path:
                shutil.rmtree(other, ignore_errors=True)
    archive = gr.update(visible=False)
    if result.bytes < ZIP_LIMIT:
        zip_path = shutil.make_archive(str(WORK.scratch_dir(sid, "zip") / result.path.name), "zip", result.path)
        archive = gr.update(value=zip_path, visible=True)
    WORK.sweep(keep=sid)
    check = (f"verified: max |Δlogits| vs the masked view = {result.max_abs_diff:.2e} (tolerance "
             f"{result.tolerance:.0e})" if result.max_abs_diff is not None else "not verified")
    where = f"`{result.path.name}` (this session's folder)" if MODE.public else f"`{result.path}`"
    return (ok(f"Exported to {where} — {len(result.files)} files, {result.bytes / 1e6:.1f} MB, "
               f"{result.seconds:.1f} s, {check}."),
            replace(session, export=ExportRecord(str(result.path), result.max_abs_diff is not None,
                                                 plan_summary(plan))), archive)


def on_push(repo_id: str, private: bool, session: Session, request: gr.Request,
            oauth_token: gr.OAuthToken | None = None, progress=gr.Progress()):
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
        url = push_folder(export.path, repo_id, token=token, private=bool(private),
                          allow_saved_token=not MODE.public,
                          progress=lambda fraction, message: progress(fraction, desc=message))
    except ReapError as exc:
        return fail(exc)
    return ok(f"Pushed to [{url}]({url}) — {export.plan}")


def on_session_end(request: gr.Request):
    """The browser tab closed: its files and stop flags go (statistics and models in memory stay cached)."""
    sid = session_id(request)
    SIGNALS.forget(sid)
    WORK.remove_session(sid)


# --- layout ----------------------------------------------------------------------------------

CSS = """
.step-title h2 {margin-bottom: 0}
.muted {opacity: 0.75}
"""

INTRO = """# REAP Studio
Compress a Mixture-of-Experts LLM by **removing experts**, and see what it costs. REAP
(*Router-weighted Expert Activation Pruning*, Lasby et al., ICLR 2026) scores each expert by the
mean, over the calibration tokens routed to it, of **gate × ‖expert output‖**, and removes the
lowest-scoring experts in every layer. Work top to bottom: load → calibrate → look → slide → prune → chat."""


def toy_examples() -> list[str]:
    return [toy_tasks.generate(d, 1, seed=42)[0].prompt for d in toy_tasks.DOMAINS]


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
        model_info = gr.Markdown("No model loaded yet.")

        gr.Markdown("## 2 · Calibrate")
        gr.Markdown("REAP needs to see the model at work: a small set of prompts is run through it once, and "
                    "for every routed (token, expert) pair the gate and the expert's output norm are recorded.",
                    elem_classes="muted")
        with gr.Row():
            categories = gr.CheckboxGroup(builtin_categories(), label="Built-in categories", scale=3)
            with gr.Column(scale=1):
                samples = gr.Number(16, precision=0, minimum=1, label="Samples per category")
                max_tokens = gr.Slider(32, 2048, value=256, step=32, label="Max tokens per sample")
        with gr.Row():
            hub_spec = gr.Textbox(label="…or a Hub dataset (name[subset](split):N)", placeholder="org/data(train):64")
            upload = gr.File(label=f"…or upload .jsonl / .txt (up to {LIMITS.upload.upper()})",
                             file_types=[".jsonl", ".txt"], type="filepath", height=120)
        with gr.Row():
            calib_btn = gr.Button("Run calibration", variant="primary", scale=3)
            calib_cancel = gr.Button("Cancel", scale=1)
        calib_status = gr.Markdown()
        with gr.Row():
            stats_file = gr.File(label="Statistics (download to reuse)", interactive=False, height=150, visible=False)
            stats_upload = gr.File(label="Upload statistics saved earlier (skips calibration)", file_types=[".npz"],
                                   type="filepath", height=150)

        gr.Markdown("## 3 · Saliency — which experts matter")
        with gr.Row():
            criterion = gr.Dropdown(CRITERION_CHOICES, value="reap", label="Criterion")
            category = gr.Dropdown(["all categories"], value="all categories", label="Calibration category")
            sort_experts = gr.Checkbox(False, label="Sort each layer by score")
        heatmap = gr.Plot(label="Saliency heatmap (× = pruned at the current ratio)")
        with gr.Accordion("What does one expert do?", open=False):
            with gr.Row(equal_height=True):
                layer_pick = gr.Dropdown([], label="Layer", allow_custom_value=True)
                expert_pick = gr.Number(0, precision=0, minimum=0, label="Expert id")
                expert_btn = gr.Button("Show its top tokens")
            expert_info = gr.Markdown()
            category_plot = gr.Plot(label="Experts by calibration category")
        with gr.Accordion("Do two criteria prune the same experts?", open=False):
            with gr.Row():
                crit_a = gr.Dropdown(CRITERION_CHOICES, value="reap", label="Criterion A")
                crit_b = gr.Dropdown(CRITERION_CHOICES, value="frequency", label="Criterion B")
            compare_plot = gr.Plot(label="Experts pruned by both criteria, per layer")

        gr.Markdown("## 4 · Compression")
        with gr.Row():
            ratio = gr.Slider(0.05, 0.95, value=0.25, step=0.05, label="Compression ratio (share of experts removed)",
                              info="A layer must keep at least top-k experts; the table says when a ratio goes too far",
                              scale=3)
            protect = gr.Checkbox(False, label="Protect super experts (outlier activations)", scale=1)
        size_table = gr.Markdown()
        prune_btn = gr.Button("Prune (masked view — instant)", variant="primary")
        prune_status = gr.Markdown()

        gr.Markdown("## 5 · Chat — original vs pruned, one copy of the weights")
        with gr.Row():
            chat_orig = gr.Chatbot(label="Original — all experts", height=380,
                                   placeholder="Prune (step 4), then send a message: this pane uses every expert")
            chat_pruned = gr.Chatbot(label="Pruned", height=380,
                                     placeholder="…and this one the pruned view, from the same weights")
        with gr.Row():
            prompt = gr.Textbox(label="Message (goes to both)", scale=4, autofocus=False)
            image = gr.Image(type="pil", label="Image (both panes)", visible=False, scale=1)
        with gr.Row():
            send_btn = gr.Button("Send", variant="primary")
            stop_btn = gr.Button("Stop")
            clear_btn = gr.Button("Clear")
        chat_status = gr.Markdown()
        with gr.Accordion("Generation settings", open=False):
            with gr.Row():
                temperature = gr.Slider(0, 1.5, value=0, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="Top-p")
                max_new = gr.Slider(16, 1024, value=160, step=16, label="Max new tokens")
                thinking = gr.Checkbox(False, label="Thinking (Gemma 4)")
        gr.Examples(toy_examples() + GENERAL_EXAMPLES, inputs=prompt, label="Example prompts (toy model domains first)")

        gr.Markdown("## 6 · Evaluate — what does pruning cost?")
        gr.Markdown("**Fidelity**: on held-out prompts (never the calibration samples), how far the pruned model's "
                    "next-token distribution moves from the original's, for many ratios and criteria at once "
                    "(masked views: one calibration, no reloads). **Generation quality** and **task accuracy** "
                    "compare the original with the current prune.", elem_classes="muted")
        with gr.Row():
            sweep_criteria = gr.CheckboxGroup(CRITERION_CHOICES, value=list(DEFAULT_CRITERIA),
                                              label="Criteria to sweep", scale=3)
            metric = gr.Dropdown([(title, name) for name, (title, _) in METRICS.items()], value="kl",
                                 label="Metric", scale=1)
        with gr.Row():
            sweep_btn = gr.Button("Run fidelity sweep", variant="primary", scale=3)
            eval_cancel = gr.Button("Cancel", scale=1)
        fidelity_plot = gr.Plot(label="Fidelity vs compression ratio (the dotted line is the current ratio)")
        fidelity_status = gr.Markdown()
        with gr.Row():
            quality_btn = gr.Button("Generation quality (current prune)")
            tasks_btn = gr.Button("Task accuracy (current prune)")
        quality_table = gr.Markdown()
        tasks_table = gr.Markdown()

        gr.Markdown("## 7 · Export & push")
        gr.Markdown("The export slices the pruned experts out of the checkpoint (shard by shard, so a 52 GB model "
                    "never has to fit in memory), writes the model card, `reap_scores.json` and a recipe, "
                    "reloads the result and checks its logits against the pruned view before anything is "
                    "published.", elem_classes="muted")
        with gr.Row():
            export_dir = gr.Textbox(label="Output folder (empty = exports/<model>-reap-<criterion>-<ratio>)", scale=3,
                                    visible=not MODE.public)  # public: each session's own folder
            export_btn = gr.Button("Export pruned checkpoint", variant="primary", scale=1)
        export_status = gr.Markdown()
        export_zip = gr.File(label="Download the exported folder (.zip)", visible=False, interactive=False)
        with gr.Row():
            if ON_SPACE:  # Gradio's local LoginButton refuses to start without a saved token: Spaces only
                gr.LoginButton(scale=1)
            elif MODE.public:
                gr.Markdown("Pushing from a public server needs a Space sign-in: download the zip instead.",
                            elem_classes="muted")
            else:
                gr.Markdown("Locally the push uses the token saved by `hf auth login`.", elem_classes="muted")
            repo_name = gr.Textbox(label="Hub repo (user/name, or name for your account)", scale=3)
            private_repo = gr.Checkbox(True, label="Private", scale=1)
            push_btn = gr.Button("Push to the Hub", scale=1)
        push_status = gr.Markdown()
        gr.Markdown(MODE.footer(), elem_classes="muted", elem_id="server-mode")

        # --- events ---
        view_inputs = [criterion, ratio, protect, sort_experts, category, session]
        view_outputs = [heatmap, size_table, category, prune_status]
        private = dict(api_visibility="private")
        compare = dict(fn=on_compare, inputs=[crit_a, crit_b, ratio, session], outputs=compare_plot, **private)

        def refresh_pickers(session):
            stats = session.stats
            layers = [f"L{i}" for i in stats.layer_indices] if stats else []
            return gr.update(choices=layers, value=layers[0] if layers else None)

        # loads have their own queue: a cached model loads at once, even while a calibration runs
        load_btn.click(on_load_model, [model_id, session], [model_info, session, categories, image],
                       api_name="load_model", concurrency_limit=1, concurrency_id="load")
        if DEFAULT_MODEL == BUNDLED_MODEL:  # small and local: ready to calibrate the moment the page opens
            demo.load(on_load_model, [model_id, session], [model_info, session, categories, image],
                      api_visibility="private")
        def cancel_work(request: gr.Request):
            SIGNALS.stop(session_id(request), "work")

        for button in (calib_cancel, eval_cancel):
            button.click(cancel_work, None, None, **({"api_name": "cancel"} if button is calib_cancel else private))
        calib_btn.click(on_calibrate, [categories, samples, hub_spec, upload, max_tokens, session],
                        [calib_status, session, stats_file], api_name="calibrate", concurrency_limit=1,
                        concurrency_id="model"
                        ).then(on_view, view_inputs, view_outputs, api_name="view").then(
            refresh_pickers, session, layer_pick, **private).then(**compare)
        stats_upload.upload(on_upload_stats, [stats_upload, session], [calib_status, session],
                            api_name="upload_stats").then(on_view, view_inputs, view_outputs, **private).then(
            refresh_pickers, session, layer_pick, **private).then(**compare)
        for control in (criterion, protect, sort_experts, category):
            control.change(on_view, view_inputs, view_outputs, show_progress="hidden", **private)
        ratio.change(on_view, view_inputs, view_outputs, show_progress="hidden", trigger_mode="always_last", **private)
        expert_btn.click(on_expert, [layer_pick, expert_pick, session], expert_info, api_name="expert")
        expert_pick.change(on_expert, [layer_pick, expert_pick, session], expert_info, **private)
        layer_pick.change(on_category_view, [layer_pick, session], category_plot, **private).then(
            on_expert, [layer_pick, expert_pick, session], expert_info, **private)
        for control in (crit_a, crit_b, ratio):
            control.change(show_progress="hidden", **compare)
        prune_btn.click(on_prune, [criterion, ratio, protect, category, session], [prune_status, session, chat_pruned],
                        api_name="prune")
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
        sweep_btn.click(on_fidelity, [sweep_criteria, metric, ratio, session], [fidelity_status, fidelity_plot, session],
                        api_name="fidelity", concurrency_limit=1, concurrency_id="model")
        for control in (metric, ratio):
            control.change(on_fidelity_redraw, [metric, ratio, session], fidelity_plot, show_progress="hidden",
                           **private)
        quality_btn.click(on_generation_quality, session, [quality_table, session],
                          api_name="generation_quality", concurrency_limit=1, concurrency_id="model")
        tasks_btn.click(on_task_accuracy, session, [tasks_table, session],
                        api_name="task_accuracy", concurrency_limit=1, concurrency_id="model")
        export_btn.click(on_export, [export_dir, session], [export_status, session, export_zip], api_name="export",
                         concurrency_limit=1, concurrency_id="model")
        push_btn.click(on_push, [repo_name, private_repo, session], push_status, api_name="push", concurrency_limit=1)
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
