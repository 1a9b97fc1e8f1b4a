"""A small built-in task benchmark for real chat models (Gemma 4), and prompts for generation checks.

What enters: nothing (the items ship in assets/eval/gemma4-bench.jsonl) or a model's raw answer.
What leaves: `BenchItem`s (a prompt and one reference answer), a yes/no from `check(item, raw)`,
and the prompts of the generation-quality check. task_eval.SUITES registers the items as the
"gemma4-bench" suite; this module knows nothing of suites (it imports no other evaluation module).

The items were written for this project (no dataset was copied): 20 grade-school word problems
with one integer answer and 16 four-option multiple-choice questions (science, everyday facts,
programming). Each has a short worked solution, so the same items double as held-out text for the
fidelity sweep (heldout.py): an item rendered with its solution is a full conversation.

Answer extraction understands Gemma 4's thinking channel: reasoning comes as
`<|channel>thought\\n ... <channel|>` before the answer, and only the text after the channel is
graded (chat.split_reasoning). A reasoning channel that never closes (token budget exhausted)
leaves no answer: graded wrong and counted as `unfinished`. When the decoder dropped the channel
markers (skip_special_tokens), the LAST "Answer:" line still comes after the reasoning.

No torch here: data, prompts and grading only; task_eval.py and generation_quality.py run the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from .chat import reasoning_unfinished, split_reasoning
from .model import ASSETS_DIR

BENCH_FILE = ASSETS_DIR / "eval" / "gemma4-bench.jsonl"
NAME = "gemma4-bench"
DOMAINS = ("math", "multiple-choice")
LETTERS = "ABCD"
MAX_NEW_TOKENS = 384            # a worked answer; with thinking on, task_eval.py uses more

_MATH_INSTRUCTION = "Show your working briefly, then end with a line of the form 'Answer: <number>'."
_MC_INSTRUCTION = "Think it through briefly, then end with a line of the form 'Answer: <letter>'."


@dataclass(frozen=True)
class BenchItem:
    id: str
    domain: str                     # "math" | "multiple-choice"
    question: str
    answer: str                     # the integer (math) or the letter A-D
    solution: str                   # short worked reasoning, for held-out text
    choices: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        if self.domain == "math":
            return f"{self.question}\n\n{_MATH_INSTRUCTION}"
        options = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(self.choices))
        return f"{self.question}\n\n{options}\n\n{_MC_INSTRUCTION}"

    @property
    def reference(self) -> str:
        """The reference assistant turn: worked solution, then the graded line."""
        return f"{self.solution}\nAnswer: {self.answer}"


@lru_cache(maxsize=1)
def load_items() -> tuple[BenchItem, ...]:
    items = []
    for line in BENCH_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            items.append(BenchItem(id=d["id"], domain=d["domain"], question=d["question"], answer=str(d["answer"]),
                                   solution=d["solution"], choices=tuple(d.get("choices", ()))))
    return tuple(items)


def items(domain: str | None = None, n: int | None = None) -> list[BenchItem]:
    """The items of one domain (or all), in file order, at most n."""
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"unknown {NAME} domain {domain!r}; valid: {', '.join(DOMAINS)}")
    chosen = [it for it in load_items() if domain is None or it.domain == domain]
    return chosen[:n] if n is not None else chosen


def to_messages(item: BenchItem, with_answer: bool = False) -> list[dict]:
    messages = [{"role": "user", "content": item.prompt}]
    if with_answer:
        messages.append({"role": "assistant", "content": item.reference})
    return messages


# --- answer extraction ------------------------------------------------------------------------

_ANSWER_MARK = re.compile(r"\banswer\b(?:\s+is)?\s*[:：]?[ \t]*\n?[ \t]*", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER_AFTER_ANSWER = re.compile(r"^[\s*_(\[]*([A-D])(?![A-Za-z])")
_LETTER_ALONE = re.compile(r"^[\s*_(\[]*([A-D])[\s*_)\].:]*$")


def final_text(raw: str) -> tuple[str, bool]:
    """(text to grade, reasoning_unfinished). The text after the thinking channel, if any."""
    unfinished = reasoning_unfinished(raw)
    _, answer = split_reasoning(raw)
    return answer, unfinished


def _answer_tail(text: str) -> str | None:
    """What follows the last 'Answer:' / 'answer is' in the text, or None."""
    marks = list(_ANSWER_MARK.finditer(text))
    if not marks:
        return None
    tail = text[marks[-1].end():].split("\n", 1)[0].strip()
    return tail or None


def extract_number(text: str) -> float | None:
    """The number after the last 'Answer:', else the last number in the text. '1,250' -> 1250."""
    tail = _answer_tail(text)
    for source in ([tail] if tail else []) + [text]:
        cleaned = source.replace("$", "").replace("\\boxed{", " ")
        numbers = _NUMBER.findall(cleaned)
        if numbers:
            pick = numbers[0] if source is tail else numbers[-1]
            try:
                return float(pick.replace(",", ""))
            except ValueError:
                return None
    return None


def extract_letter(text: str) -> str | None:
    """The letter after the last 'Answer:', else the last line that is only a letter ('(C)', 'C)')."""
    tail = _answer_tail(text)
    if tail:
        m = _LETTER_AFTER_ANSWER.match(tail)
        if m:
            return m.group(1)
    for line in reversed(text.splitlines()):
        m = _LETTER_ALONE.match(line)
        if m:
            return m.group(1)
    return None


def extract(item: BenchItem, raw: str) -> str | None:
    """The graded answer of a raw model output, as a string ('25', 'C'), or None."""
    text, _ = final_text(raw)
    if item.domain == "math":
        value = extract_number(text)
        return None if value is None else (str(int(value)) if value == int(value) else str(value))
    return extract_letter(text)


def check(item: BenchItem, raw: str) -> bool:
    got = extract(item, raw)
    if got is None:
        return False
    if item.domain == "math":
        return abs(float(got) - float(item.answer)) < 1e-6
    return got == item.answer


# --- prompts for the generation-quality check (generation_quality.py) ---------------------------
# (domain, prompt). Written for this project. "long-answer" asks for a long text, so a model that
# stops early or rambles shows; "repetition-stress" asks for long lists and enumerations, where a
# damaged model falls into loops first.

GENERATION_PROMPTS: tuple[tuple[str, str], ...] = (
    ("explanation", "Explain in a short paragraph why the sky is blue."),
    ("explanation", "What is the difference between a virus and a bacterium?"),
    ("explanation", "Explain what a hash table is to a new programmer."),
    ("coding", "Write a Python function that returns the n-th Fibonacci number iteratively."),
    ("coding", "Write a SQL query that counts orders per customer in a table orders(customer_id, id)."),
    ("coding", "What does `git rebase` do, compared with `git merge`?"),
    ("math", "A rectangle has a perimeter of 36 cm and its length is twice its width. Find its area."),
    ("math", "Solve for x: 3x + 7 = 25. Show the steps."),
    ("math", "What is the probability of rolling two sixes with two fair dice?"),
    ("advice", "Give me three tips to sleep better."),
    ("advice", "How should I prepare for a job interview as a junior data analyst?"),
    ("writing", "Write a four-line poem about autumn rain."),
    ("writing", "Write a polite email asking a colleague to review my report by Friday."),
    ("long-answer", "Write a detailed, multi-paragraph guide to starting a vegetable garden on a balcony."),
    ("long-answer", "Describe the water cycle in detail, step by step, for a high-school student."),
    ("long-answer", "Tell a complete short story of about 400 words about a lighthouse keeper who finds a message in a bottle."),
    ("repetition-stress", "List 30 different animals, one per line, without repeating any."),
    ("repetition-stress", "Count from 1 to 50 in words, separated by commas."),
    ("repetition-stress", "Name 25 countries and their capitals, one pair per line."),
    ("repetition-stress", "Write 20 different sentences that each start with the word 'Today'."),
)
