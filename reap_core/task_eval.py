"""Task accuracy: greedy answers to held-out items, checked exactly, per domain — original vs pruned.

What enters: a model and its tokenizer (with a chat template), or a `LoadedModel` and a
`PruningPlan`; a suite name and a count of items per domain. What leaves: a `SuiteResult`
((correct, total) per domain, for one variant) or a `TaskReport` (both variants, same items).

SUITES is the one registry of suites: "toy" (the bundled model's eight tasks, toy_tasks.py) and
"gemma4-bench" (built-in items for real chat models, gemma_bench.py). Every path — the CLI with or
without --ratio, the app, the scripts — scores through `run_suite`, which answers through
greedy.generate_greedy, so the original gets the same score wherever it is measured;
`suite_accuracy` adds the settings that fit the model and the masked view.

The checker grades the answer after the reasoning channel (chat.split_reasoning). A reasoning
channel that never closes (token budget exhausted) leaves no answer: graded wrong and counted as
`unfinished`. With thinking on, the budget is 4x the suite's.

CLI: python -m reap_core eval --model assets/toy-gemma4-moe --suite toy
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from . import gemma_bench, toy_tasks
from .eval_defaults import defaults_for
from .greedy import Progress, generate_greedy
from .merging import compressed_view
from .model import LoadedModel
from .plan import PruningPlan

if TYPE_CHECKING:
    pass

THINKING_BUDGET = 4          # with thinking on, the token budget is this many times the suite's


@dataclass(frozen=True)
class Suite:
    """A named set of domains: how to draw items and how to check an answer."""

    name: str
    domains: tuple[str, ...]
    generate: Callable[[str, int, int], list]  # (domain, n, seed) -> items with .prompt
    check: Callable[[str, Any, str], bool]     # (domain, item, answer text) -> correct?
    to_messages: Callable[[Any], list[dict]]   # item -> chat messages without the answer
    default_seed: int
    max_new_tokens: int  # longest reference answer of the suite plus margin
    tools: Callable[[Any], list[dict] | None] = lambda item: None   # tools declared to an item
    image_domains: tuple[str, ...] = ()   # need the model's processor; skipped without one


SUITES: dict[str, Suite] = {
    "toy": Suite(
        name="toy", domains=toy_tasks.DOMAINS, generate=toy_tasks.generate, check=toy_tasks.check,
        to_messages=lambda item: toy_tasks.to_messages(item, with_answer=False),
        default_seed=toy_tasks.EVAL_SEED, max_new_tokens=80, tools=toy_tasks.tools_of,
        image_domains=toy_tasks.IMAGE_DOMAINS),
    gemma_bench.NAME: Suite(   # items in file order: the seed is not used
        name=gemma_bench.NAME, domains=gemma_bench.DOMAINS,
        generate=lambda domain, n, seed: gemma_bench.items(domain, n),
        check=lambda domain, item, answer: gemma_bench.check(item, answer),
        to_messages=lambda item: gemma_bench.to_messages(item, with_answer=False),
        default_seed=0, max_new_tokens=gemma_bench.MAX_NEW_TOKENS),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown eval suite {name!r}; valid suites: {', '.join(sorted(SUITES))}")
    return SUITES[name]


# --- one variant ---------------------------------------------------------------------------------

@dataclass
class SuiteResult:
    suite: str
    per_domain: dict[str, tuple[int, int]]  # domain -> (correct, total)
    seed: int = 0
    unfinished: int = 0          # answers whose reasoning never closed (graded wrong)
    max_new_tokens: int = 0      # the token budget used
    skipped: tuple[str, ...] = ()   # image domains left out: the model has no processor

    @property
    def mean_accuracy(self) -> float:
        """Unweighted mean over domains (each domain counts the same)."""
        accs = [c / t for c, t in self.per_domain.values() if t]
        return sum(accs) / len(accs) if accs else 0.0

    def accuracy(self, domain: str) -> float:
        correct, total = self.per_domain[domain]
        return correct / total if total else 0.0

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "seed": self.seed,
            "per_domain": {d: {"correct": c, "total": t, "accuracy": c / t if t else 0.0}
                           for d, (c, t) in self.per_domain.items()},
            "mean_accuracy": self.mean_accuracy,
            "unfinished": self.unfinished,
            "max_new_tokens": self.max_new_tokens,
            "skipped": list(self.skipped),
        }

    def format_table(self) -> str:
        """Markdown, in the same shape as TaskReport's (one table format for every evaluation)."""
        lines = ["| Domain | N | Correct | Accuracy |", "|---|---:|---:|---:|"]
        for d, (c, t) in self.per_domain.items():
            lines.append(f"| {d} | {t} | {c}/{t} | {c / t if t else 0.0:.1%} |")
        lines.append(f"| **mean** (of domains) | {sum(t for _, t in self.per_domain.values())} | | "
                     f"{self.mean_accuracy:.1%} |")
        if self.unfinished:
            lines.append(f"\n{self.unfinished} answers ran out of tokens inside the reasoning channel (graded wrong)")
        if self.skipped:
            lines.append(f"\nNot measured (image tasks, and no image processor): {', '.join(self.skipped)}")
        return "\n".join(lines)


def run_suite(model, tokenizer, suite: str = "toy", items_per_domain: int = 40, seed: int | None = None,
              max_new_tokens: int | None = None, batch_size: int = 16, progress: Progress | None = None,
              thinking: bool = False, processor: Any = None, domains: tuple[str, ...] | None = None) -> SuiteResult:
    """Accuracy per domain of greedy answers on `items_per_domain` held-out items per domain.

    `seed` defaults to the suite's (toy: toy_tasks.EVAL_SEED, apart from the training and
    calibration seeds). `domains`: only these of the suite's; `processor`: for image domains.
    `progress`, if given, is called with (items done, items total) after each batch.
    """
    s = get_suite(suite)
    seed = s.default_seed if seed is None else seed
    budget = max_new_tokens or (THINKING_BUDGET * s.max_new_tokens if thinking else s.max_new_tokens)
    wanted = [d for d in s.domains if domains is None or d in domains]
    skipped = tuple(d for d in s.image_domains if processor is None and d in wanted)
    domains = [d for d in wanted if d not in skipped]
    items = [(d, it) for d in domains for it in s.generate(d, items_per_domain, seed)]
    answers = generate_greedy(model, tokenizer, [s.to_messages(it) for _, it in items], budget, batch_size,
                              thinking, progress, tools=[s.tools(it) for _, it in items], processor=processor)
    per_domain = {d: (0, 0) for d in domains}
    for (d, it), ans in zip(items, answers):
        c, t = per_domain[d]
        per_domain[d] = (c + int(s.check(d, it, ans.text)), t + 1)
    return SuiteResult(suite=s.name, per_domain=per_domain, seed=seed, max_new_tokens=budget,
                       unfinished=sum(a.unfinished for a in answers), skipped=skipped)


def suite_accuracy(loaded: LoadedModel, plan: PruningPlan | None = None, suite: str = "auto",
                   items_per_domain: int | None = None, thinking: bool = False, max_new_tokens: int | None = None,
                   batch_size: int | None = None, progress: Progress | None = None) -> SuiteResult:
    """`run_suite` on the masked view of `plan` (None = the original), with the suite and batch
    size that fit the model (eval_defaults) — the one call behind every original-vs-pruned number."""
    d = defaults_for(loaded)
    with compressed_view(loaded, plan):
        return run_suite(loaded.model, loaded.tokenizer, d["suite"] if suite == "auto" else suite,
                         items_per_domain=items_per_domain or 40, max_new_tokens=max_new_tokens,
                         batch_size=batch_size or d["batch_size"], progress=progress, thinking=thinking,
                         processor=loaded.processor)


# --- both variants -------------------------------------------------------------------------------

@dataclass
class TaskReport:
    suite: str
    per_domain: dict[str, dict[str, list[int]]]   # domain -> {"original": [correct, total], "pruned": [...]}
    plan: dict
    settings: dict
    unfinished: dict[str, int] = field(default_factory=dict)   # variant -> reasoning never closed

    def accuracy(self, variant: str, domain: str | None = None) -> float:
        rows = [self.per_domain[domain]] if domain else list(self.per_domain.values())
        c, t = sum(r[variant][0] for r in rows), sum(r[variant][1] for r in rows)
        return c / t if t else 0.0

    @property
    def samples(self) -> int:
        return sum(r["original"][1] for r in self.per_domain.values())

    def format_table(self) -> str:
        lines = ["| Domain | N | Original | Pruned |", "|---|---:|---:|---:|"]
        for d, r in self.per_domain.items():
            (oc, ot), (pc, pt) = r["original"], r["pruned"]
            lines.append(f"| {d} | {ot} | {oc}/{ot} ({oc / max(ot, 1):.0%}) | {pc}/{pt} ({pc / max(pt, 1):.0%}) |")
        lines.append(f"| **all** | {self.samples} | {self.accuracy('original'):.1%} | {self.accuracy('pruned'):.1%} |")
        if any(self.unfinished.values()):
            lines.append(f"\nRan out of tokens inside the reasoning channel (graded wrong): original "
                         f"{self.unfinished.get('original', 0)}, pruned {self.unfinished.get('pruned', 0)}.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def task_accuracy(loaded: LoadedModel, plan: PruningPlan, suite: str = "auto", items_per_domain: int | None = None,
                  thinking: bool = False, max_new_tokens: int | None = None, batch_size: int | None = None,
                  progress: Progress | None = None) -> TaskReport:
    """Accuracy per domain, original vs pruned, on the same items (greedy, same settings)."""
    per: dict[str, dict[str, list[int]]] = {}
    unfinished: dict[str, int] = {}
    for v, (variant, p) in enumerate((("original", None), ("pruned", plan))):
        step = (lambda done, t, v=v: progress(v * t + done, 2 * t)) if progress else None
        res = suite_accuracy(loaded, p, suite, items_per_domain, thinking, max_new_tokens, batch_size, step)
        for dom, (c, t) in res.per_domain.items():
            per.setdefault(dom, {})[variant] = [c, t]
        unfinished[variant] = res.unfinished
    n_items = sum(t for _, t in res.per_domain.values())
    settings = dict(items_per_domain=items_per_domain or 40, items=n_items, seed=res.seed, thinking=thinking,
                    max_new_tokens=res.max_new_tokens, batch_size=batch_size or defaults_for(loaded)["batch_size"],
                    greedy=True)
    return TaskReport(suite=res.suite, per_domain=per, unfinished=unfinished, settings=settings,
                      plan=dict(criterion=plan.criterion, ratio=plan.compression_ratio, experts_kept=plan.num_kept,
                                num_experts=plan.num_experts))
