"""Vision under pruning: does the pruned model still see, and does calibrating with images help?

What enters: a multimodal model with its processor, REAP statistics from two (or more) calibrations
— e.g. text only, and text plus image chats — and the ratios to compare. What leaves: a
`VisionReport`: per calibration and ratio, accuracy on the toy image tasks and on the text tasks
(greedy, checked by program, with 95% Wilson intervals and the item counts), and the fidelity of
the image answers to the original (teacher-forced on the reference answer: KL(original ‖ pruned)
per token and top-1 agreement).

Why: REAP scores experts by what the calibration routes to them. Image tokens reach the same
experts as text tokens, so a calibration without pictures can call an expert that only pictures
use "unimportant" and prune it — the report measures whether that happens.

Everything runs through the engine (make_plan → masked views → run_suite), as the app and the CLI do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from . import toy_tasks
from .fidelity import compare_log_probs
from .masking import masked_rows, masked_view
from .model import ASSETS_DIR, LoadedModel
from .plan import make_plan
from .stats import ExpertStats
from .task_eval import run_suite

Progress = Callable[[str], None]
BUNDLED_REPORT = ASSETS_DIR / "demo" / "vision-pruning.json"   # written by benchmarks/vision_pruning.py


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at 0 and at n, unlike p ± 1.96·se)."""
    if total == 0:
        return 0.0, 0.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class VisionPoint:
    calibration: str                     # the name given to the statistics ("original" for the unpruned model)
    ratio: float
    image: dict[str, list[int]]          # image domain -> [correct, total]
    text: dict[str, list[int]]           # text domain -> [correct, total]
    kl: float                            # mean KL(original ‖ pruned) per reference-answer token of image items
    top1: float                          # share of those tokens where both predict the same token

    def accuracy(self, which: str = "image") -> tuple[int, int]:
        rows = (self.image if which == "image" else self.text).values()
        return sum(r[0] for r in rows), sum(r[1] for r in rows)


@dataclass
class VisionReport:
    points: list[VisionPoint]
    settings: dict = field(default_factory=dict)

    def format_table(self) -> str:
        lines = ["| Calibration | Pruned | Image tasks (95% CI) | Text tasks (95% CI) | KL / token (images) "
                 "| Top-1 agreement (images) |", "|---|---:|---:|---:|---:|---:|"]
        for p in self.points:
            cells = []
            for which in ("image", "text"):
                c, t = p.accuracy(which)
                lo, hi = wilson(c, t)
                cells.append(f"{c}/{t} = {c / max(t, 1):.0%} ({lo:.0%}–{hi:.0%})")
            lines.append(f"| {p.calibration} | {p.ratio:.0%} | {cells[0]} | {cells[1]} | {p.kl:.3f} | {p.top1:.1%} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"points": [asdict(p) for p in self.points], "settings": self.settings}

    @classmethod
    def from_dict(cls, d: dict) -> "VisionReport":
        return cls([VisionPoint(**p) for p in d["points"]], d.get("settings", {}))


@torch.inference_mode()
def image_fidelity(loaded: LoadedModel, plans: list, items: list) -> list[dict]:
    """Per plan (None = original): mean KL(original ‖ plan) and top-1 agreement over the reference
    answer tokens of image items, teacher-forced. One forward per item holds every plan, one row each."""
    processor, tok = loaded.processor, loaded.tokenizer
    sums = [dict(kl=0.0, agree=0, tokens=0) for _ in plans]
    device = loaded.input_device
    for item in items:
        enc = processor.apply_chat_template(toy_tasks.to_messages(item, with_answer=False), add_generation_prompt=True,
                                            tokenize=True, return_dict=True, return_tensors="pt")
        reply = tok(item.answer + "<turn|>", add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = torch.cat([enc["input_ids"], reply], dim=1)
        n, start = len(plans) + 1, enc["input_ids"].shape[1]
        inputs = {"input_ids": ids.repeat(n, 1), "attention_mask": torch.ones_like(ids).repeat(n, 1),
                  "pixel_values": enc["pixel_values"].repeat(n, 1, 1),
                  "image_position_ids": enc["image_position_ids"].repeat(n, 1, 1)}
        with masked_rows(loaded, [None, *plans]):
            logits = loaded.model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).logits
        log_probs = logits[:, start - 1:-1].float().log_softmax(-1)     # predictions of the reply tokens
        targets = reply[0]
        for s, test in zip(sums, log_probs[1:]):
            c = compare_log_probs(log_probs[0], test, targets)
            s["kl"] += c["kl"]
            s["agree"] += c["agree"]
            s["tokens"] += c["tokens"]
    return [dict(kl=s["kl"] / max(s["tokens"], 1), top1=s["agree"] / max(s["tokens"], 1)) for s in sums]


def vision_under_pruning(loaded: LoadedModel, calibrations: dict[str, ExpertStats], ratios: list[float],
                         image_items: int = 40, text_items: int = 20, criterion: str = "reap",
                         progress: Progress | None = None) -> VisionReport:
    """The original and, per calibration and ratio, the REAP-pruned model: image and text accuracy, image fidelity."""
    if loaded.processor is None:
        raise ValueError("vision under pruning needs a model with an image processor")
    say = progress or (lambda msg: None)
    seed = toy_tasks.EVAL_SEED
    fidelity_items = [it for d in toy_tasks.IMAGE_DOMAINS for it in toy_tasks.generate(d, image_items, seed)]
    variants: list[tuple[str, float, object]] = [("original", 0.0, None)]
    variants += [(name, r, make_plan(stats, r, criterion)) for name, stats in calibrations.items() for r in ratios]
    say("fidelity on image answers")
    fid = [dict(kl=0.0, top1=1.0)] + image_fidelity(loaded, [p for _, _, p in variants[1:]], fidelity_items)
    points = []
    for (name, ratio, plan), f in zip(variants, fid):
        say(f"accuracy: {name} at {ratio:.0%}")
        with masked_view(loaded, plan):
            img = run_suite(loaded.model, loaded.tokenizer, "toy", image_items, processor=loaded.processor,
                            domains=toy_tasks.IMAGE_DOMAINS)
            txt = run_suite(loaded.model, loaded.tokenizer, "toy", text_items, domains=toy_tasks.TEXT_DOMAINS)
        points.append(VisionPoint(name, ratio, {d: list(v) for d, v in img.per_domain.items()},
                                  {d: list(v) for d, v in txt.per_domain.items()}, f["kl"], f["top1"]))
    settings = dict(criterion=criterion, ratios=list(ratios), image_items_per_domain=image_items,
                    text_items_per_domain=text_items, seed=seed, greedy=True,
                    calibrations={name: stats.calibration.get("spec", "") for name, stats in calibrations.items()})
    return VisionReport(points, settings)


def bundled_report_markdown() -> str:
    """The measured vision-under-pruning table of the bundled model, with how it was measured."""
    import json

    if not BUNDLED_REPORT.is_file():
        return "Not measured yet: run `python benchmarks/vision_pruning.py`."
    report = VisionReport.from_dict(json.loads(BUNDLED_REPORT.read_text()))
    s = report.settings
    calibs = "; ".join(f"**{k}**: `{v}`" for k, v in s.get("calibrations", {}).items())
    return (f"REAP on the bundled model, calibrated two ways ({calibs}; {s.get('samples_per_category')} samples "
            f"per category). Greedy answers to {s.get('image_items_per_domain')} image questions per image task and "
            f"{s.get('text_items_per_domain')} per text task (held-out seed {s.get('seed')}); KL and top-1 on the "
            f"reference answers of the image questions. Reproduce: `python benchmarks/vision_pruning.py`.\n\n"
            + report.format_table())
