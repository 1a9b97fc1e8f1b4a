"""Generation quality: do the pruned model's greedy answers loop or collapse where the original's don't?

What enters: a loaded model, a `PruningPlan`, prompts (a named set or (domain, prompt) pairs).
What leaves: a `GenerationReport` — per domain, for the original and the prune: answers, average
words, loop rate, collapse rate, and how often the token budget stopped the answer.

Both variants answer the same prompts through greedy.generate_greedy under masked views of one
model. The prompt sets include long-answer and repetition-stress prompts: where damage shows as
loops first.

Definitions (shown in the UI and the card):
  loop      the answer contains a span of >= LOOP_MIN_TOKENS tokens (words and punctuation runs)
            made of one unit of 1..LOOP_MAX_PERIOD tokens, containing a word, repeated back to
            back >= LOOP_MIN_REPEATS times ("a cat, a cat, a cat, ...").
  collapse  the answer (after the reasoning channel) is empty, has no letter or digit, or has
            >= 10 words of which one single word is at least half.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from . import gemma_bench, toy_tasks
from .eval_defaults import defaults_for
from .greedy import GreedyAnswer, Progress, generate_greedy
from .heldout import HELDOUT_SEED
from .merging import compressed_view
from .model import LoadedModel
from .plan import PruningPlan

LOOP_MIN_TOKENS = 20
LOOP_MIN_REPEATS = 3
LOOP_MAX_PERIOD = 25
_TOKEN = re.compile(r"\w+|[^\w\s]+")
_WORD = re.compile(r"\w+")


# --- loops and collapse, on text -----------------------------------------------------------------

def find_loop(text: str) -> tuple[int, int] | None:
    """(period, repeats) of the longest back-to-back repeated unit that makes a loop, or None."""
    toks = _TOKEN.findall(text.lower())
    best = None
    for p in range(1, min(LOOP_MAX_PERIOD, len(toks) // LOOP_MIN_REPEATS) + 1):
        run = 0
        for i in range(len(toks) - p + 1):
            if i + p < len(toks) and toks[i] == toks[i + p]:
                run += 1
                continue
            span, start = run + p, i - run
            if run and span >= LOOP_MIN_TOKENS and span // p >= LOOP_MIN_REPEATS \
                    and any(_WORD.fullmatch(t) for t in toks[start:start + p]):
                if best is None or span > best[0]:
                    best = (span, p, span // p)
            run = 0
    return None if best is None else (best[1], best[2])


def is_loop(text: str) -> bool:
    return find_loop(text) is not None


def is_collapse(text: str) -> bool:
    if not re.search(r"[^\W_]", text):          # empty, whitespace, or punctuation only
        return True
    words = _WORD.findall(text.lower())
    return len(words) >= 10 and Counter(words).most_common(1)[0][1] * 2 >= len(words)


# --- prompts -------------------------------------------------------------------------------------

def prompt_set(name: str, per_domain: int = 4) -> list[tuple[str, str]]:
    """(domain, prompt) pairs. 'toy': held-out toy tasks per domain plus the long-answer and
    repetition-stress prompts (out of the toy's training distribution: where damage shows as loops);
    'general': gemma_bench.GENERATION_PROMPTS."""
    stress = [(d, p) for d, p in gemma_bench.GENERATION_PROMPTS if d in ("long-answer", "repetition-stress")]
    if name == "toy":
        tasks = [(d, it.prompt) for d in toy_tasks.TEXT_DOMAINS   # text prompts: a picture question needs its picture
                 for it in toy_tasks.generate(d, per_domain, HELDOUT_SEED)]
        return tasks + stress
    if name == "general":
        return list(gemma_bench.GENERATION_PROMPTS)
    raise ValueError(f"unknown prompt set {name!r}; choose 'toy' or 'general'")


# --- the report ----------------------------------------------------------------------------------

@dataclass
class DomainQuality:
    n: int
    avg_words: float
    loop_rate: float
    collapse_rate: float
    limit_rate: float        # stopped by max_new_tokens, not by an end-of-turn token


def _quality(answers: list[GreedyAnswer]) -> DomainQuality:
    texts = [a.text for a in answers]
    n = len(texts)
    return DomainQuality(n=n, avg_words=sum(len(t.split()) for t in texts) / max(n, 1),
                         loop_rate=sum(map(is_loop, texts)) / max(n, 1),
                         collapse_rate=sum(map(is_collapse, texts)) / max(n, 1),
                         limit_rate=sum(a.hit_limit for a in answers) / max(n, 1))


@dataclass
class GenerationReport:
    plan: dict                                   # criterion, ratio, experts kept
    per_domain: dict[str, dict[str, DomainQuality]]   # domain -> {"original", "pruned"}
    settings: dict
    samples: list[dict] = field(default_factory=list)  # domain, prompt, original, pruned (answers)

    def overall(self, variant: str) -> DomainQuality:
        qs = [v[variant] for v in self.per_domain.values()]
        n = sum(q.n for q in qs)
        w = lambda a: sum(getattr(q, a) * q.n for q in qs) / max(n, 1)  # noqa: E731
        return DomainQuality(n, w("avg_words"), w("loop_rate"), w("collapse_rate"), w("limit_rate"))

    def format_table(self) -> str:
        head = ("| Domain | N | Orig AvgWords | Pruned AvgWords | Orig Loop | Pruned Loop | Orig Collapse "
                "| Pruned Collapse |\n|---|---:|---:|---:|---:|---:|---:|---:|")
        rows = [*self.per_domain.items(), ("**all**", {"original": self.overall("original"),
                                                        "pruned": self.overall("pruned")})]
        lines = [f"| {d} | {v['original'].n} | {v['original'].avg_words:.1f} | {v['pruned'].avg_words:.1f} | "
                 f"{v['original'].loop_rate:.0%} | {v['pruned'].loop_rate:.0%} | {v['original'].collapse_rate:.0%} | "
                 f"{v['pruned'].collapse_rate:.0%} |" for d, v in rows]
        return head + "\n" + "\n".join(lines)

    def to_dict(self) -> dict:
        return dict(plan=self.plan, settings=self.settings, samples=self.samples,
                    per_domain={d: {k: asdict(q) for k, q in v.items()} for d, v in self.per_domain.items()})

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationReport":
        return cls(plan=d["plan"], settings=d["settings"], samples=d.get("samples", []),
                   per_domain={k: {v: DomainQuality(**q) for v, q in var.items()} for k, var in d["per_domain"].items()})


GENERATION_DEFINITIONS = (
    f"AvgWords: mean whitespace-separated words of the answer (reasoning channel removed). "
    f"Loop: the answer repeats one unit of 1-{LOOP_MAX_PERIOD} tokens back to back at least {LOOP_MIN_REPEATS} "
    f"times over at least {LOOP_MIN_TOKENS} tokens (tokens = words and punctuation runs; the unit holds a word). "
    f"Collapse: empty answer, no letter or digit, or >= 10 words of which one word is at least half. "
    f"Greedy decoding, same prompts for both.")


def generation_quality(loaded: LoadedModel, plan: PruningPlan, prompts: str | list[tuple[str, str]] = "auto",
                       max_new_tokens: int | None = None, batch_size: int | None = None, thinking: bool = False,
                       per_domain: int = 4, progress: Progress | None = None) -> GenerationReport:
    """Greedy answers of the original and of `plan` to the same prompts, summarised per domain."""
    d = defaults_for(loaded)
    if isinstance(prompts, str):
        prompts = prompt_set(d["prompts"] if prompts == "auto" else prompts, per_domain)
    max_new_tokens = max_new_tokens or d["max_new_tokens"]
    batch_size = batch_size or d["batch_size"]
    convs = [[{"role": "user", "content": p}] for _, p in prompts]
    total = 2 * len(convs)
    answers: dict[str, list[GreedyAnswer]] = {}
    for v, (variant, p) in enumerate((("original", None), ("pruned", plan))):
        step = (lambda done, _t, v=v: progress(v * len(convs) + done, total)) if progress else None
        with compressed_view(loaded, p):
            answers[variant] = generate_greedy(loaded.model, loaded.tokenizer, convs, max_new_tokens, batch_size,
                                               thinking, step)
    domains = list(dict.fromkeys(dom for dom, _ in prompts))
    per = {dom: {v: _quality([a for (dd, _), a in zip(prompts, answers[v]) if dd == dom])
                 for v in ("original", "pruned")} for dom in domains}
    samples = [dict(domain=dom, prompt=p, original=o.text, pruned=q.text)
               for (dom, p), o, q in zip(prompts, answers["original"], answers["pruned"])]
    return GenerationReport(plan=dict(criterion=plan.criterion, ratio=plan.compression_ratio,
                                      experts_kept=plan.num_kept, num_experts=plan.num_experts),
                            per_domain=per, samples=samples,
                            settings=dict(max_new_tokens=max_new_tokens, greedy=True, thinking=thinking,
                                          prompts=len(prompts), definitions=GENERATION_DEFINITIONS))
