"""Image tasks for the bundled toy Gemma 4: synthetic pictures a program can draw and check.

What enters: a seeded random generator. What leaves: a drawing spec (plain data, so an item can be
stored, compared and redrawn) and the 64x64 RGB picture it describes (`draw`). Three domains, each
with its own question and one exact answer, so a checker can grade the model's reply:

- shapes:   one shape (circle, square, triangle) in one colour          -> "A red circle."
- counting: one to five small shapes of one colour                      -> "There are 3 shapes."
- position: one shape in one quarter of the picture                     -> "The square is at the top left."

64x64 is what the bundled processor keeps without resizing (patch 4, pooling 2: 8x8 = 64 image
tokens); bigger pictures a user attaches are resized by the processor to about that many pixels.
Pure Pillow, no downloads.
"""

from __future__ import annotations

import random
import re
from typing import Any

SIZE = 64
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20),
           "purple": (140, 40, 170), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
QUARTERS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}

QUESTIONS = {
    "shapes": ["What is in the image?", "Describe the shape in the picture.", "What shape and colour do you see?"],
    "counting": ["How many shapes are in the image?", "Count the shapes in the picture.",
                 "How many shapes do you see?"],
    "position": ["Where is the shape in the image?", "In which part of the picture is the shape?",
                 "Where is the shape?"],
}
DOMAINS = tuple(QUESTIONS)


def _shape_box(rng: random.Random, size: int, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
    """A size x size box placed at random inside [x0, x1) x [y0, y1)."""
    x = rng.randint(x0, max(x0, x1 - size))
    y = rng.randint(y0, max(y0, y1 - size))
    return (x, y, x + size, y + size)


def make_spec(domain: str, rng: random.Random) -> dict:
    """A drawing spec for `domain`: shapes as (kind, colour, box), and the facts the answer states."""
    if domain == "shapes":
        kind, colour = rng.choice(SHAPES), rng.choice(sorted(COLOURS))
        return {"shapes": [(kind, colour, _shape_box(rng, rng.randint(22, 40), 4, 4, SIZE - 4, SIZE - 4))],
                "kind": kind, "colour": colour}
    if domain == "counting":
        n, colour, kind = rng.randint(1, 5), rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        cells = rng.sample([(cx, cy) for cx in range(3) for cy in range(3)], n)   # a 3x3 grid: never overlapping
        shapes = [(kind, colour, _shape_box(rng, rng.randint(10, 15), 2 + cx * 21, 2 + cy * 21,
                                            2 + cx * 21 + 19, 2 + cy * 21 + 19)) for cx, cy in cells]
        return {"shapes": shapes, "count": n}
    if domain == "position":
        kind, colour, quarter = rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.choice(sorted(QUARTERS))
        qx, qy = QUARTERS[quarter]
        half = SIZE // 2
        box = _shape_box(rng, rng.randint(14, 24), qx * half + 2, qy * half + 2, qx * half + half - 2,
                         qy * half + half - 2)
        return {"shapes": [(kind, colour, box)], "kind": kind, "quarter": quarter}
    raise ValueError(f"unknown image domain {domain!r}; valid: {', '.join(DOMAINS)}")


def answer_for(domain: str, spec: dict) -> str:
    if domain == "shapes":
        return f"A {spec['colour']} {spec['kind']}."
    if domain == "counting":
        n = spec["count"]
        return "There is 1 shape." if n == 1 else f"There are {n} shapes."
    return f"The {spec['kind']} is at the {spec['quarter']}."


def thought_for(domain: str, spec: dict) -> str:
    """What the model writes in its thought channel before answering (thinking on)."""
    if domain == "counting":
        return "I count the shapes: " + ", ".join(str(i + 1) for i in range(spec["count"])) + "."
    if domain == "position":
        return f"I see one {spec['kind']}; I check which quarter it is in."
    return "I look at the shape and its colour."


def draw(spec: dict) -> Any:
    """The 64x64 RGB picture of `spec` (white background)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    for kind, colour, (x0, y0, x1, y1) in spec["shapes"]:
        fill = COLOURS[colour]
        if kind == "circle":
            pen.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif kind == "square":
            pen.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            pen.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    return image


def check(domain: str, spec: dict, answer: str) -> bool:
    """True if `answer` states exactly the facts of the picture (case and spacing ignored)."""
    text = " ".join(answer.lower().split())
    if domain == "shapes":
        colours = [c for c in COLOURS if re.search(rf"\b{c}\b", text)]
        kinds = [k for k in SHAPES if re.search(rf"\b{k}s?\b", text)]
        return colours == [spec["colour"]] and kinds == [spec["kind"]]
    if domain == "counting":
        numbers = re.findall(r"\b\d+\b", text)
        return numbers == [str(spec["count"])]
    if domain == "position":
        quarters = [q for q in QUARTERS if q in text]
        return quarters == [spec["quarter"]]
    raise ValueError(f"unknown image domain {domain!r}")
