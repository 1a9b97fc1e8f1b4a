"""Toy multi-domain tasks for the bundled toy Gemma 4 MoE: generators and exact checkers.

What enters: a domain name, a seed and a count. What leaves: `Item`s (a user prompt and the one
reference answer) and, for a model's answer, a yes/no from `check(domain, item, answer)`.

Why it exists: the bundled toy model (assets/toy-gemma4-moe) is trained on these five domains so
that its experts have something to specialise in and so that every answer can be checked by a
program. The same generators feed training (scripts/train_toy_model.py), the calibration sets
(scripts/make_toy_calibration.py, assets/calibration/toy-<domain>.jsonl) and the evaluation
suite (reap_core/task_eval.py). Seeds keep them apart: see TRAIN_SEED, CALIBRATION_SEED, EVAL_SEED.

The domains differ on purpose in vocabulary and structure, so routing can tell them apart:

- math:        arithmetic word problems, a short worked step, then "The answer is N."
- code:        a small Python function from a one-line description (checked by ast.parse + tests)
- tools:       a JSON tool call from a tool list and a request (checked field by field)
- facts:       questions on a built-in fact table (capitals, continents, chemical symbols)
- translation: simple English sentences into Spanish (a small lexicon, gender agreement)

Everything is procedural and seeded (random.Random(seed)); no downloads, no torch.
"""

from __future__ import annotations

import ast
import json
import random
import re
import warnings
from dataclasses import dataclass
from typing import Callable

# Seeds: training, calibration and evaluation never share a seed. Items are drawn from the same
# distributions (facts come from one fixed table, so eval questions ask about trained facts;
# the other domains are combinatorial, so eval items are almost all unseen).
TRAIN_SEED = 1234
CALIBRATION_SEED = 5678
EVAL_SEED = 9999

DOMAINS = ("math", "code", "tools", "facts", "translation")


@dataclass(frozen=True)
class Item:
    """One task: the user prompt, the reference answer, and what the checker needs."""

    domain: str
    prompt: str
    answer: str
    meta: dict  # checker data (expected number, tests, expected call, ...)


# ---------------------------------------------------------------------------------------------
# math: "Mia has 34 shells and finds 27 more. ..." -> "4 + 7 = 11, 30 + 20 = 50, 50 + 11 = 61.
# The answer is 61." The worked step splits the sum into single-digit and tens sums, which a
# small model can learn as lookup tables; the final number is what the checker reads.
# ---------------------------------------------------------------------------------------------

_NAMES = ["Mia", "Tom", "Ana", "Leo", "Sara", "Ben", "Nora", "Omar", "Lily", "Sam", "Zoe", "Max",
          "Ivy", "Raj", "Eva", "Finn"]
_THINGS = ["apples", "stickers", "marbles", "books", "coins", "shells", "pencils", "cards",
           "stamps", "cookies", "balloons", "buttons"]
_ADD_TEMPLATES = [
    "{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?",
    "{n} had {a} {t}. A friend gave {n} {b} more {t}. How many {t} does {n} have?",
    "There are {a} {t} in a box and {b} {t} on the table. How many {t} are there in total?",
    "{n} collected {a} {t} on Monday and {b} {t} on Tuesday. How many {t} did {n} collect?",
]
_SUB_TEMPLATES = [
    "{n} has {a} {t} and gives away {b}. How many {t} are left?",
    "{n} had {a} {t} and lost {b} of them. How many {t} does {n} have now?",
    "A shop had {a} {t} and sold {b}. How many {t} are left in the shop?",
]
_MUL_TEMPLATES = [
    "{n} has {a} bags with {b} {t} in each bag. How many {t} does {n} have?",
    "There are {a} rows of {t} with {b} {t} in each row. How many {t} are there?",
]


def _math_item(rng: random.Random) -> Item:
    op = rng.choices(["add", "sub", "mul"], weights=[5, 4, 2])[0]
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    if op == "add":
        a, b = rng.randint(10, 89), rng.randint(10, 89)
        result = a + b
        units, tens = a % 10 + b % 10, (a // 10 + b // 10) * 10
        work = f"{a % 10} + {b % 10} = {units}, {a // 10 * 10} + {b // 10 * 10} = {tens}, {tens} + {units} = {result}."
        prompt = rng.choice(_ADD_TEMPLATES).format(n=name, a=a, b=b, t=thing)
    elif op == "sub":
        a = rng.randint(20, 99)
        b = rng.randint(10, a - 1)
        result = a - b
        mid = a - b // 10 * 10
        work = f"{a} - {b // 10 * 10} = {mid}, {mid} - {b % 10} = {result}."
        prompt = rng.choice(_SUB_TEMPLATES).format(n=name, a=a, b=b, t=thing)
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        result = a * b
        work = f"{a} x {b} = {result}."
        prompt = rng.choice(_MUL_TEMPLATES).format(n=name, a=a, b=b, t=thing)
    return Item("math", prompt, f"{work} The answer is {result}.", {"result": result})


def _check_math(item: Item, answer: str) -> bool:
    found = re.findall(r"answer is (-?\d+)", answer)
    return bool(found) and int(found[-1]) == item.meta["result"]


# ---------------------------------------------------------------------------------------------
# code: "Write a Python function `scale_price` that returns x multiplied by 7." -> a fenced
# function. The checker parses it with ast, runs it with no builtins but a few safe ones, and
# calls it on fixed inputs against the reference implementation.
# ---------------------------------------------------------------------------------------------

_VERBS = ["compute", "get", "make", "calc", "find", "build", "apply", "eval"]
_NOUNS = ["total", "score", "value", "price", "size", "result", "count", "level", "amount", "index"]

# (description template, body template, argument kind, reference function of (args, k))
_CODE_SPECS: list[tuple[str, str, str, Callable]] = [
    ("returns x plus {k}", "return x + {k}", "x", lambda x, k: x + k),
    ("returns x minus {k}", "return x - {k}", "x", lambda x, k: x - k),
    ("returns x multiplied by {k}", "return x * {k}", "x", lambda x, k: x * k),
    ("returns the remainder of x divided by {k}", "return x % {k}", "x", lambda x, k: x % k),
    ("returns True if x is greater than {k}", "return x > {k}", "x", lambda x, k: x > k),
    ("returns True if x is divisible by {k}", "return x % {k} == 0", "x", lambda x, k: x % k == 0),
    ("returns the sum of a and b", "return a + b", "ab", lambda a, b, k: a + b),
    ("returns the product of a and b", "return a * b", "ab", lambda a, b, k: a * b),
    ("returns the larger of a and b", "return max(a, b)", "ab", lambda a, b, k: max(a, b)),
    ("returns the smaller of a and b", "return min(a, b)", "ab", lambda a, b, k: min(a, b)),
    ("returns the sum of the list xs", "return sum(xs)", "xs", lambda xs, k: sum(xs)),
    ("returns the length of the list xs", "return len(xs)", "xs", lambda xs, k: len(xs)),
    ("returns the first {k} items of the list xs", "return xs[:{k}]", "xs", lambda xs, k: xs[:k]),
    ("returns the list xs with every item multiplied by {k}", "return [v * {k} for v in xs]", "xs",
     lambda xs, k: [v * k for v in xs]),
    ("returns how many items of the list xs are greater than {k}",
     "return sum(1 for v in xs if v > {k})", "xs", lambda xs, k: sum(1 for v in xs if v > k)),
    ("returns the string s in upper case", "return s.upper()", "s", lambda s, k: s.upper()),
    ("returns the string s reversed", "return s[::-1]", "s", lambda s, k: s[::-1]),
    ("returns the string s repeated {k} times", "return s * {k}", "s", lambda s, k: s * k),
]
_CODE_PROMPTS = [
    "Write a Python function `{f}({args})` that {desc}.",
    "Implement `{f}({args})` in Python: it {desc}.",
    "Python: define `{f}({args})`, which {desc}.",
]
_ARGS = {"x": "x", "ab": "a, b", "xs": "xs", "s": "s"}
_TEST_INPUTS = {
    "x": [(0,), (7,), (12,), (-5,), (100,)],
    "ab": [(3, 4), (10, -2), (0, 9), (7, 7)],
    "xs": [([1, 5, 9, 2],), ([],), ([10, 3, 8, 8, 1, 6],), ([4],)],
    "s": [("abc",), ("Hello",), ("",), ("toy moe",)],
}


def _code_item(rng: random.Random) -> Item:
    spec_idx = rng.randrange(len(_CODE_SPECS))
    desc_t, body_t, kind, _ = _CODE_SPECS[spec_idx]
    k = rng.randint(2, 9)
    fname = f"{rng.choice(_VERBS)}_{rng.choice(_NOUNS)}"
    args = _ARGS[kind]
    prompt = rng.choice(_CODE_PROMPTS).format(f=fname, args=args, desc=desc_t.format(k=k))
    answer = f"```python\ndef {fname}({args}):\n    {body_t.format(k=k)}\n```"
    return Item("code", prompt, answer, {"spec": spec_idx, "k": k, "name": fname})


_SAFE_BUILTINS = {"sum": sum, "len": len, "max": max, "min": min, "range": range, "abs": abs,
                  "True": True, "False": False}


def _check_code(item: Item, answer: str) -> bool:
    m = re.search(r"```python\n(.*?)```", answer, re.S)
    source = m.group(1) if m else answer
    try:
        with warnings.catch_warnings():  # a broken model answer is a wrong answer, not a warning
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except SyntaxError:
        return False
    # Only a single plain function definition is accepted: no imports, no other statements.
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return False
    if tree.body[0].name != item.meta["name"]:
        return False
    # No imports, no while loops, no attribute access but `.upper` (blocks `__class__` tricks).
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.While)):
            return False
        if isinstance(node, ast.Attribute) and node.attr != "upper":
            return False
    _, _, kind, ref = _CODE_SPECS[item.meta["spec"]]
    namespace: dict = {"__builtins__": _SAFE_BUILTINS}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = compile(tree, "<toy-code>", "exec")
        exec(code, namespace)  # noqa: S102 - sandboxed above
        fn = namespace[item.meta["name"]]
        return all(fn(*args) == ref(*args, item.meta["k"]) for args in _TEST_INPUTS[kind])
    except Exception:  # any runtime error is a wrong answer
        return False


# ---------------------------------------------------------------------------------------------
# tools: a list of 3 tool schemas (JSON) and a request -> {"name": ..., "arguments": {...}}.
# The checker parses the JSON and compares name and every argument exactly.
# ---------------------------------------------------------------------------------------------

_CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Berlin", "Madrid", "Toronto", "Sydney",
           "Nairobi", "Rome", "Seoul", "Dublin", "Quito"]
_PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
_TOOLS: list[dict] = [
    {"name": "get_weather", "params": {"city": "string", "unit": "celsius|fahrenheit"}},
    {"name": "set_alarm", "params": {"hour": "integer", "minute": "integer"}},
    {"name": "send_email", "params": {"to": "string", "subject": "string"}},
    {"name": "convert_currency", "params": {"amount": "integer", "source": "string", "target": "string"}},
    {"name": "book_table", "params": {"city": "string", "people": "integer"}},
    {"name": "play_music", "params": {"genre": "string", "volume": "integer"}},
    {"name": "get_time", "params": {"city": "string"}},
    {"name": "add_reminder", "params": {"task": "string", "day": "string"}},
]
_CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CHF", "CAD"]
_GENRES = ["jazz", "rock", "classical", "pop", "blues", "reggae"]
_TASKS = ["call mom", "buy milk", "pay rent", "water plants", "renew passport", "book dentist"]
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_SUBJECTS = ["meeting", "invoice", "holiday", "report", "birthday", "budget"]


def _tool_request(name: str, rng: random.Random) -> tuple[str, dict]:
    """A natural-language request for tool `name` and the arguments it implies."""
    if name == "get_weather":
        a = {"city": rng.choice(_CITIES), "unit": rng.choice(["celsius", "fahrenheit"])}
        return rng.choice(["What is the weather in {city} in {unit}?",
                           "Weather for {city}, please, in {unit}."]).format(**a), a
    if name == "set_alarm":
        a = {"hour": rng.randint(0, 23), "minute": rng.choice([0, 5, 10, 15, 20, 30, 45, 50])}
        return rng.choice(["Set an alarm for {hour}:{minute:02d}.",
                           "Wake me up at {hour}:{minute:02d}."]).format(**a), a
    if name == "send_email":
        a = {"to": rng.choice(_PEOPLE), "subject": rng.choice(_SUBJECTS)}
        return rng.choice(["Send an email to {to} about the {subject}.",
                           "Email {to} with the subject {subject}."]).format(**a), a
    if name == "convert_currency":
        src, tgt = rng.sample(_CURRENCIES, 2)
        a = {"amount": rng.randint(1, 500), "source": src, "target": tgt}
        return rng.choice(["Convert {amount} {source} to {target}.",
                           "How much is {amount} {source} in {target}?"]).format(**a), a
    if name == "book_table":
        a = {"city": rng.choice(_CITIES), "people": rng.randint(1, 12)}
        return rng.choice(["Book a table for {people} in {city}.",
                           "Reserve a restaurant in {city} for {people} people."]).format(**a), a
    if name == "play_music":
        a = {"genre": rng.choice(_GENRES), "volume": rng.randint(1, 10)}
        return rng.choice(["Play some {genre} at volume {volume}.",
                           "Put on {genre} music, volume {volume}."]).format(**a), a
    if name == "get_time":
        a = {"city": rng.choice(_CITIES)}
        return rng.choice(["What time is it in {city}?", "Tell me the local time in {city}."]).format(**a), a
    if name == "add_reminder":
        a = {"task": rng.choice(_TASKS), "day": rng.choice(_DAYS)}
        return rng.choice(["Remind me to {task} on {day}.",
                           "Add a reminder: {task}, {day}."]).format(**a), a
    raise KeyError(name)


def _tools_item(rng: random.Random) -> Item:
    offered = rng.sample(_TOOLS, 3)
    target = rng.choice(offered)["name"]
    request, args = _tool_request(target, rng)
    schema = json.dumps([{"name": t["name"], "parameters": t["params"]} for t in offered])
    prompt = f"Tools: {schema}\nRequest: {request}\nReply with one JSON tool call."
    call = {"name": target, "arguments": args}
    return Item("tools", prompt, json.dumps(call), {"call": call})


def _check_tools(item: Item, answer: str) -> bool:
    try:
        call = json.loads(answer.strip())
    except (json.JSONDecodeError, ValueError):
        return False
    return isinstance(call, dict) and call == item.meta["call"]


# ---------------------------------------------------------------------------------------------
# facts: a fixed table, several phrasings per relation, one exact answer sentence.
# ---------------------------------------------------------------------------------------------

# country: (capital, continent)
_COUNTRIES = {
    "France": ("Paris", "Europe"), "Germany": ("Berlin", "Europe"), "Italy": ("Rome", "Europe"),
    "Spain": ("Madrid", "Europe"), "Portugal": ("Lisbon", "Europe"), "Norway": ("Oslo", "Europe"),
    "Sweden": ("Stockholm", "Europe"), "Finland": ("Helsinki", "Europe"), "Poland": ("Warsaw", "Europe"),
    "Greece": ("Athens", "Europe"), "Austria": ("Vienna", "Europe"), "Ireland": ("Dublin", "Europe"),
    "Hungary": ("Budapest", "Europe"), "Denmark": ("Copenhagen", "Europe"),
    "Japan": ("Tokyo", "Asia"), "China": ("Beijing", "Asia"), "India": ("New Delhi", "Asia"),
    "Thailand": ("Bangkok", "Asia"), "Vietnam": ("Hanoi", "Asia"), "Nepal": ("Kathmandu", "Asia"),
    "Mongolia": ("Ulaanbaatar", "Asia"), "Iran": ("Tehran", "Asia"), "Indonesia": ("Jakarta", "Asia"),
    "Egypt": ("Cairo", "Africa"), "Kenya": ("Nairobi", "Africa"), "Nigeria": ("Abuja", "Africa"),
    "Ghana": ("Accra", "Africa"), "Morocco": ("Rabat", "Africa"), "Ethiopia": ("Addis Ababa", "Africa"),
    "Senegal": ("Dakar", "Africa"), "Peru": ("Lima", "South America"), "Chile": ("Santiago", "South America"),
    "Brazil": ("Brasilia", "South America"), "Argentina": ("Buenos Aires", "South America"),
    "Colombia": ("Bogota", "South America"), "Ecuador": ("Quito", "South America"),
    "Canada": ("Ottawa", "North America"), "Mexico": ("Mexico City", "North America"),
    "Cuba": ("Havana", "North America"), "Australia": ("Canberra", "Oceania"),
    "Fiji": ("Suva", "Oceania"), "Samoa": ("Apia", "Oceania"),
}
_ELEMENTS = {
    "hydrogen": "H", "helium": "He", "lithium": "Li", "carbon": "C", "nitrogen": "N", "oxygen": "O",
    "fluorine": "F", "neon": "Ne", "sodium": "Na", "magnesium": "Mg", "aluminium": "Al",
    "silicon": "Si", "phosphorus": "P", "sulfur": "S", "chlorine": "Cl", "argon": "Ar",
    "potassium": "K", "calcium": "Ca", "iron": "Fe", "copper": "Cu", "zinc": "Zn", "silver": "Ag",
    "tin": "Sn", "iodine": "I", "gold": "Au", "mercury": "Hg", "lead": "Pb", "uranium": "U",
}
_FACT_QUESTIONS = {
    "capital": ["What is the capital of {x}?", "Which city is the capital of {x}?",
                "Name the capital city of {x}."],
    "continent": ["On which continent is {x}?", "Which continent is {x} in?",
                  "{x} lies on which continent?"],
    "symbol": ["What is the chemical symbol of {x}?", "Which symbol stands for {x}?",
               "Give the element symbol for {x}."],
}


def _facts_item(rng: random.Random) -> Item:
    relation = rng.choices(["capital", "continent", "symbol"], weights=[3, 2, 2])[0]
    if relation == "symbol":
        x = rng.choice(sorted(_ELEMENTS))
        answer = f"The chemical symbol of {x} is {_ELEMENTS[x]}."
    else:
        x = rng.choice(sorted(_COUNTRIES))
        capital, continent = _COUNTRIES[x]
        answer = (f"The capital of {x} is {capital}." if relation == "capital"
                  else f"{x} is in {continent}.")
    prompt = rng.choice(_FACT_QUESTIONS[relation]).format(x=x)
    return Item("facts", prompt, answer, {})


# ---------------------------------------------------------------------------------------------
# translation: "Translate into Spanish: the small dog sees the white house." ->
# "el perro pequeño ve la casa blanca." Adjectives follow the noun and agree in gender.
# ---------------------------------------------------------------------------------------------

# english noun: (spanish noun, gender)
_ES_NOUNS = {
    "dog": ("perro", "m"), "cat": ("gato", "m"), "house": ("casa", "f"), "book": ("libro", "m"),
    "bird": ("pájaro", "m"), "table": ("mesa", "f"), "woman": ("mujer", "f"), "man": ("hombre", "m"),
    "child": ("niño", "m"), "girl": ("niña", "f"), "car": ("coche", "m"), "door": ("puerta", "f"),
    "apple": ("manzana", "f"), "horse": ("caballo", "m"), "flower": ("flor", "f"),
    "tree": ("árbol", "m"), "window": ("ventana", "f"), "fish": ("pez", "m"),
    "river": ("río", "m"), "city": ("ciudad", "f"), "letter": ("carta", "f"), "boat": ("barco", "m"),
}
# english adjective: (masculine, feminine)
_ES_ADJS = {
    "red": ("rojo", "roja"), "small": ("pequeño", "pequeña"), "big": ("grande", "grande"),
    "white": ("blanco", "blanca"), "black": ("negro", "negra"), "old": ("viejo", "vieja"),
    "new": ("nuevo", "nueva"), "pretty": ("bonito", "bonita"), "green": ("verde", "verde"),
    "tall": ("alto", "alta"),
}
_ES_VERBS = {
    "sees": "ve", "has": "tiene", "wants": "quiere", "finds": "encuentra", "watches": "mira",
    "opens": "abre", "follows": "sigue", "paints": "pinta", "buys": "compra", "carries": "lleva",
}


def _noun_phrase(rng: random.Random) -> tuple[str, str]:
    noun = rng.choice(sorted(_ES_NOUNS))
    es_noun, gender = _ES_NOUNS[noun]
    det_en, det_es = rng.choice([("the", {"m": "el", "f": "la"}), ("a", {"m": "un", "f": "una"})])
    if rng.random() < 0.6:
        adj = rng.choice(sorted(_ES_ADJS))
        es_adj = _ES_ADJS[adj][0 if gender == "m" else 1]
        return f"{det_en} {adj} {noun}", f"{det_es[gender]} {es_noun} {es_adj}"
    return f"{det_en} {noun}", f"{det_es[gender]} {es_noun}"


def _translation_item(rng: random.Random) -> Item:
    subj_en, subj_es = _noun_phrase(rng)
    verb = rng.choice(sorted(_ES_VERBS))
    obj_en, obj_es = _noun_phrase(rng)
    english = f"{subj_en} {verb} {obj_en}"
    spanish = f"{subj_es} {_ES_VERBS[verb]} {obj_es}"
    english = english[0].upper() + english[1:] + "."
    spanish = spanish[0].upper() + spanish[1:] + "."
    prompt = rng.choice(["Translate into Spanish: {s}", "Spanish, please: {s}",
                         "How do you say this in Spanish? {s}"]).format(s=english)
    return Item("translation", prompt, spanish, {})


def _check_exact(item: Item, answer: str) -> bool:
    return " ".join(answer.split()) == " ".join(item.answer.split())


# ---------------------------------------------------------------------------------------------
# Public interface
# ---------------------------------------------------------------------------------------------

_GENERATORS: dict[str, Callable[[random.Random], Item]] = {
    "math": _math_item, "code": _code_item, "tools": _tools_item, "facts": _facts_item,
    "translation": _translation_item,
}
_CHECKERS: dict[str, Callable[[Item, str], bool]] = {
    "math": _check_math, "code": _check_code, "tools": _check_tools, "facts": _check_exact,
    "translation": _check_exact,
}


def _domain_seed(domain: str, seed: int) -> int:
    # A stable per-domain offset (str hash is salted per process, so not hash()).
    return seed * 1000 + DOMAINS.index(domain)


def generate(domain: str, n: int, seed: int) -> list[Item]:
    """`n` items of `domain`, the same list for the same (domain, n, seed)."""
    if domain not in _GENERATORS:
        raise ValueError(f"unknown toy domain {domain!r}; valid: {', '.join(DOMAINS)}")
    rng = random.Random(_domain_seed(domain, seed))
    return [_GENERATORS[domain](rng) for _ in range(n)]


def check(domain: str, item: Item, model_answer: str) -> bool:
    """True if `model_answer` (the assistant text, without turn markers) solves `item`."""
    if domain not in _CHECKERS:
        raise ValueError(f"unknown toy domain {domain!r}; valid: {', '.join(DOMAINS)}")
    return _CHECKERS[domain](item, model_answer.strip())


def to_messages(item: Item, with_answer: bool = True) -> list[dict]:
    """The chat form of an item: a user turn, and the assistant turn if `with_answer`."""
    messages = [{"role": "user", "content": item.prompt}]
    if with_answer:
        messages.append({"role": "assistant", "content": item.answer})
    return messages


def training_conversations(n_per_domain: int, seed: int = TRAIN_SEED) -> list[list[dict]]:
    """Shuffled chat conversations, `n_per_domain` of each domain, for training."""
    convs = [to_messages(it) for d in DOMAINS for it in generate(d, n_per_domain, seed)]
    random.Random(seed).shuffle(convs)
    return convs
