"""Toy multi-domain tasks for the bundled toy Gemma 4 MoE: generators and exact checkers.

What enters: a domain name, a seed and a count. What leaves: `Item`s (a user prompt and the one
reference answer) and, for a model's answer, a yes/no from `check(domain, item, answer)`.

Why it exists: the bundled toy model (assets/toy-gemma4-moe) is trained on these eight domains so
that its experts have something to specialise in and so that every answer can be checked by a
program. The same generators feed training (scripts/train_toy_model.py), the calibration sets
(scripts/make_toy_calibration.py, assets/calibration/toy-<domain>.jsonl) and the evaluation
suite (reap_core/task_eval.py). Seeds keep them apart: see TRAIN_SEED, CALIBRATION_SEED, EVAL_SEED.

The domains differ on purpose in vocabulary and structure, so routing can tell them apart:

- math:        arithmetic word problems, worked column by column, then "The answer is N."
- code:        a small Python function from a one-line description (checked by ast.parse + tests)
- tools:       a Gemma 4 tool call (`<|tool_call>call:NAME{...}<tool_call|>`) for tools declared in
               the system turn (checked field by field)
- facts:       questions on a built-in fact table (capitals, continents, chemical symbols)
- translation: simple English sentences into Spanish (a small lexicon, gender agreement)
- shapes, counting, position: questions on a synthetic picture (toy_vision.py)

Thinking: every item also has a `thought`, what the model writes in Gemma 4's thought channel when
thinking is on. With thinking on, math's column steps move into the thought and the answer is only
"The answer is N."; with thinking off they stay in the answer (the model shows its work).

Everything is procedural and seeded (random.Random(seed)); no downloads, no torch.
"""

from __future__ import annotations

import ast
import random
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from . import toy_vision

# Seeds: training, calibration and evaluation never share a seed. Items are drawn from the same
# distributions (facts come from one fixed table, so eval questions ask about trained facts;
# the other domains are combinatorial, so eval items are almost all unseen).
TRAIN_SEED = 1234
CALIBRATION_SEED = 5678
EVAL_SEED = 9999

TEXT_DOMAINS = ("math", "code", "tools", "facts", "translation")
IMAGE_DOMAINS = toy_vision.DOMAINS
DOMAINS = TEXT_DOMAINS + IMAGE_DOMAINS   # appended: a text domain's items keep their seed


@dataclass(frozen=True)
class Item:
    """One task: the user prompt, the reference answer, and what the checker needs."""

    domain: str
    prompt: str
    answer: str                  # with thinking off
    meta: dict                   # checker data (expected number, tests, expected call, image spec, ...)
    thought: str = ""            # the thought channel's text with thinking on
    thinking_answer: str = ""    # the answer after the thought ("" = the same as `answer`)
    tools: tuple = field(default=())   # tool declarations (OpenAI function format) for the system turn

    @property
    def image(self) -> Any:
        """The picture of an image item (drawn on each call; None for a text item)."""
        spec = self.meta.get("image")
        return toy_vision.draw(spec) if spec else None

    def reply(self, thinking: bool) -> str:
        """What the model writes after the generation prompt, up to (not including) its end token."""
        if not thinking:
            return self.answer
        return f"<|channel>thought\n{self.thought}<channel|>{self.thinking_answer or self.answer}"


# ---------------------------------------------------------------------------------------------
# math: "Mia has 34 shells and finds 27 more. ..." -> "34 + 27: 4 + 7 = 11, carry 1; 3 + 2 + 1 = 6.
# So 61. The answer is 61." Column by column, every step a one-digit fact a small model can learn
# as a lookup table; the final number is what the checker reads.
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
        units, carry = a % 10 + b % 10, (a % 10 + b % 10) // 10
        tens = a // 10 + b // 10 + carry
        work = (f"{a} + {b}: {a % 10} + {b % 10} = {units}, carry 1; {a // 10} + {b // 10} + 1 = {tens}."
                if carry else f"{a} + {b}: {a % 10} + {b % 10} = {units}; {a // 10} + {b // 10} = {tens}.")
        prompt = rng.choice(_ADD_TEMPLATES).format(n=name, a=a, b=b, t=thing)
    elif op == "sub":
        a = rng.randint(20, 99)
        b = rng.randint(10, a - 1)
        result = a - b
        if a % 10 < b % 10:
            work = (f"{a} - {b}: {a % 10} - {b % 10} needs a borrow, {a % 10 + 10} - {b % 10} = {a % 10 + 10 - b % 10};"
                    f" {a // 10} - {b // 10} - 1 = {a // 10 - b // 10 - 1}.")
        else:
            work = f"{a} - {b}: {a % 10} - {b % 10} = {a % 10 - b % 10}; {a // 10} - {b // 10} = {a // 10 - b // 10}."
        prompt = rng.choice(_SUB_TEMPLATES).format(n=name, a=a, b=b, t=thing)
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        result = a * b
        work = f"{a} x {b} = {result}."
        prompt = rng.choice(_MUL_TEMPLATES).format(n=name, a=a, b=b, t=thing)
    if op != "mul":
        work += f" So {result}."
    final = f"The answer is {result}."
    return Item("math", prompt, f"{work} {final}", {"result": result}, thought=work, thinking_answer=final)


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
    return Item("code", prompt, answer, {"spec": spec_idx, "k": k, "name": fname},
                thought=f"One function, {fname}({args}), that {desc_t.format(k=k)}.")


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
# tools: 3 tools declared in the system turn and a request -> one Gemma 4 tool call,
# <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,unit:<|"|>celsius<|"|>}<tool_call|>. The checker
# parses the call and compares name and every argument exactly.
# ---------------------------------------------------------------------------------------------

_CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Berlin", "Madrid", "Toronto", "Sydney",
           "Nairobi", "Rome", "Seoul", "Dublin", "Quito"]
_PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
_TOOLS: list[dict] = [
    {"name": "get_weather", "params": {"city": "string", "unit": "celsius|fahrenheit"}, "about": "Current weather"},
    {"name": "set_alarm", "params": {"hour": "integer", "minute": "integer"}, "about": "Set an alarm"},
    {"name": "send_email", "params": {"to": "string", "subject": "string"}, "about": "Send an email"},
    {"name": "convert_currency", "params": {"amount": "integer", "source": "string", "target": "string"},
     "about": "Convert money"},
    {"name": "book_table", "params": {"city": "string", "people": "integer"}, "about": "Book a restaurant"},
    {"name": "play_music", "params": {"genre": "string", "volume": "integer"}, "about": "Play music"},
    {"name": "get_time", "params": {"city": "string"}, "about": "Local time"},
    {"name": "add_reminder", "params": {"task": "string", "day": "string"}, "about": "Add a reminder"},
]


def _declaration(tool: dict) -> dict:
    """A toy tool as an OpenAI-style function declaration (what chat templates take as `tools`)."""
    props = {}
    for key, kind in tool["params"].items():
        props[key] = ({"type": "string", "enum": kind.split("|")} if "|" in kind else {"type": kind})
    return {"type": "function", "function": {"name": tool["name"], "description": tool["about"],
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": list(tool["params"])}}}


def _quote(value) -> str:
    return f'<|"|>{value}<|"|>' if isinstance(value, str) else str(value)


def format_tool_call(name: str, arguments: dict) -> str:
    """A Gemma 4 tool call as the model writes it (keys sorted, strings in <|"|>, as the template does)."""
    return f"<|tool_call>call:{name}{{" + ",".join(f"{k}:{_quote(v)}" for k, v in sorted(arguments.items())) + "}<tool_call|>"


_CALL = re.compile(r"<\|tool_call>call:(\w+)\{(.*?)\}<tool_call\|>", re.S)
_ARG = re.compile(r'(\w+):(?:<\|"\|>(.*?)<\|"\|>|(-?\d+))')


def parse_tool_calls(text: str) -> list[dict]:
    """The Gemma 4 tool calls in a model's raw output, as {"name", "arguments"} (flat arguments:
    strings and integers, what the toy tools take)."""
    calls = []
    for name, body in _CALL.findall(text):
        args, rest = {}, body
        for m in _ARG.finditer(body):
            args[m.group(1)] = m.group(2) if m.group(3) is None else int(m.group(3))
            rest = rest.replace(m.group(0), "", 1)
        if rest.strip(","):
            args["__unparsed__"] = rest
        calls.append({"name": name, "arguments": args})
    return calls
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
    call = {"name": target, "arguments": args}
    return Item("tools", request, format_tool_call(target, args), {"call": call},
                thought=f"The request fits {target}.", tools=tuple(_declaration(t) for t in offered))


def _check_tools(item: Item, answer: str) -> bool:
    return parse_tool_calls(answer) == [item.meta["call"]]


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
    return Item("facts", prompt, answer, {}, thought=f"A question about the {relation} of {x}.")


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
    return Item("translation", prompt, spanish, {},
                thought="Word by word; adjectives follow the noun and agree with it.")


def _check_exact(item: Item, answer: str) -> bool:
    return " ".join(answer.split()) == " ".join(item.answer.split())


# ---------------------------------------------------------------------------------------------
# Public interface
# ---------------------------------------------------------------------------------------------

def _image_item(domain: str) -> Callable[[random.Random], Item]:
    def make(rng: random.Random) -> Item:
        spec = toy_vision.make_spec(domain, rng)
        return Item(domain, rng.choice(toy_vision.QUESTIONS[domain]), toy_vision.answer_for(domain, spec),
                    {"image": spec}, thought=toy_vision.thought_for(domain, spec))
    return make


_GENERATORS: dict[str, Callable[[random.Random], Item]] = {
    "math": _math_item, "code": _code_item, "tools": _tools_item, "facts": _facts_item,
    "translation": _translation_item, **{d: _image_item(d) for d in IMAGE_DOMAINS},
}
_CHECKERS: dict[str, Callable[[Item, str], bool]] = {
    "math": _check_math, "code": _check_code, "tools": _check_tools, "facts": _check_exact,
    "translation": _check_exact,
    **{d: (lambda item, answer, d=d: toy_vision.check(d, item.meta["image"], answer)) for d in IMAGE_DOMAINS},
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
    """The chat form of an item: a user turn (the picture first, for an image item), and the assistant
    turn if `with_answer` (a tool call for a tools item). Its tools go to the template as `tools`."""
    image = item.image
    content: Any = ([{"type": "image", "image": image}, {"type": "text", "text": item.prompt}]
                    if image is not None else item.prompt)
    messages = [{"role": "user", "content": content}]
    if with_answer:
        if item.domain == "tools":
            call = item.meta["call"]
            messages.append({"role": "assistant", "tool_calls": [
                {"type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]})
        else:
            messages.append({"role": "assistant", "content": item.answer})
    return messages


def tools_of(item: Item) -> list[dict] | None:
    return list(item.tools) or None
