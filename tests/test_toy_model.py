"""The bundled toy Gemma 4 MoE (assets/toy-gemma4-moe), its tasks and its calibration sets.

Loads the model offline with the Auto classes, checks a few greedy answers, a small eval run (4 items
per task) against the accuracy recorded at training time and against chance, and the toy calibration
files. (Its chat format: test_gemma4_format.py; its pictures: test_vision.py.)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

from reap_core import toy_tasks  # noqa: E402
from reap_core.task_eval import SuiteResult, get_suite, run_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "assets" / "toy-gemma4-moe"
CALIB_DIR = ROOT / "assets" / "calibration"


@pytest.fixture(scope="module")
def toy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reap_core.processors import load_processor

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    return model.eval(), tokenizer, load_processor(MODEL_DIR)[0]


# ---- tasks (no model) -------------------------------------------------------------------------

@pytest.mark.parametrize("domain", toy_tasks.DOMAINS)
def test_checker_accepts_reference_and_rejects_other_answers(domain):
    items = toy_tasks.generate(domain, 30, seed=1)
    assert all(toy_tasks.check(domain, it, it.answer) for it in items)
    # Another item's answer must (almost always) be wrong: the checker really checks. A picture task's
    # answer is right for another picture with the same checked fact (colour and kind, count, quarter).
    checked = {"shapes": ("colour", "kind"), "counting": ("count",), "position": ("quarter",)}.get(domain, ())
    fact = lambda it: [it.meta["image"][k] for k in checked]   # noqa: E731
    others = [(it, items[(i + 1) % 30]) for i, it in enumerate(items)]
    if domain in toy_tasks.IMAGE_DOMAINS:
        others = [(it, o) for it, o in others if fact(it) != fact(o)]
    wrong = sum(toy_tasks.check(domain, it, o.answer) for it, o in others)
    assert wrong <= 3
    assert not toy_tasks.check(domain, items[0], "")


def test_generators_are_seeded_and_seeds_differ():
    a = toy_tasks.generate("translation", 20, seed=toy_tasks.EVAL_SEED)
    assert a == toy_tasks.generate("translation", 20, seed=toy_tasks.EVAL_SEED)
    assert a != toy_tasks.generate("translation", 20, seed=toy_tasks.TRAIN_SEED)
    assert len({toy_tasks.TRAIN_SEED, toy_tasks.CALIBRATION_SEED, toy_tasks.EVAL_SEED}) == 3


def test_code_checker_runs_the_function():
    item = toy_tasks.generate("code", 1, seed=3)[0]
    name = item.meta["name"]
    assert not toy_tasks.check("code", item, f"```python\ndef {name}(x):\n    return 12345\n```")
    assert not toy_tasks.check("code", item, "```python\ndef broken(:\n```")


def test_unknown_suite_lists_valid_ones():
    with pytest.raises(ValueError, match="toy"):
        get_suite("nope")


# ---- the bundled model ------------------------------------------------------------------------

def test_model_is_a_gemma4_moe(toy):
    model, tokenizer, _ = toy
    cfg = model.config.text_config
    assert type(model).__name__ == "Gemma4ForConditionalGeneration" and model.config.vision_config is not None
    assert cfg.enable_moe_block and cfg.num_experts >= 32 and cfg.top_k_experts >= 4
    assert {"sliding_attention", "full_attention"} <= set(cfg.layer_types)
    assert cfg.layer_types[-1] == "full_attention"
    for tok in ["<bos>", "<eos>", "<pad>", "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>",
                "<|tool_call>", "<|tool_response>", '<|"|>', "<|image|>"]:
        assert len(tokenizer(tok, add_special_tokens=False)["input_ids"]) == 1, tok
    assert tokenizer.pad_token == "<pad>"


def test_generation_answers_in_domain_prompts(toy):
    model, tokenizer, _ = toy
    eos = model.generation_config.eos_token_id
    assert tokenizer.convert_tokens_to_ids("<turn|>") in eos
    prompts = [
        ("facts", "What is the capital of France?", "The capital of France is Paris."),
        ("translation", "Translate into Spanish: The red cat sees the house.", "El gato rojo ve la casa."),
    ]
    for domain, prompt, expected in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert answer.strip() == expected, (domain, answer)
        assert out[0, -1].item() in eos  # stopped at the end of its turn


ITEMS = 4  # eval items per task in these tests: 32 greedy answers, generated once per module
TASKS = len(toy_tasks.DOMAINS)


@pytest.fixture(scope="module")
def suite_run(toy):
    model, tokenizer, processor = toy
    seen = []
    result = run_suite(model, tokenizer, "toy", items_per_domain=ITEMS, batch_size=5 * ITEMS,
                       progress=lambda done, total: seen.append((done, total)), processor=processor)
    return result, seen


def test_run_suite_matches_recorded_accuracy(suite_run):
    result, seen = suite_run
    recorded = json.loads((MODEL_DIR / "training_args.json").read_text())["eval"]
    assert recorded["seed"] == result.seed == toy_tasks.EVAL_SEED
    assert isinstance(result, SuiteResult)
    assert seen[-1] == (TASKS * ITEMS, TASKS * ITEMS)
    assert set(result.per_domain) == set(toy_tasks.DOMAINS)
    assert all(total == ITEMS for _, total in result.per_domain.values())
    # The items here are the first ITEMS of the 40 recorded at training time (same seed, same
    # generator), so a domain recorded at 40/40 must answer all of them: one miss in all such
    # domains together is allowed for float differences between machines, no more.
    for domain in toy_tasks.DOMAINS:
        assert toy_tasks.generate(domain, ITEMS, toy_tasks.EVAL_SEED) == \
            toy_tasks.generate(domain, 40, toy_tasks.EVAL_SEED)[:ITEMS]
    perfect = [d for d, v in recorded["per_domain"].items() if v["correct"] == v["total"] == 40]
    assert perfect, recorded
    misses = {d: ITEMS - result.per_domain[d][0] for d in perfect}
    assert sum(misses.values()) <= 1, misses
    assert "mean" in result.format_table()
    assert result.to_dict()["per_domain"]["math"]["total"] == ITEMS


def _chance_accuracy(domain: str, n: int = 40, others: int = 8) -> float:
    """Accuracy of an answer that is well formed but belongs to another question: the fraction of
    (item, another item's reference answer) pairs the checker accepts. No model involved."""
    items = toy_tasks.generate(domain, n, seed=toy_tasks.EVAL_SEED)
    pairs = [(i, (i + j) % n) for i in range(n) for j in range(1, others + 1)]
    return sum(toy_tasks.check(domain, items[i], items[j].answer) for i, j in pairs) / len(pairs)


def _min_correct_above_chance(n: int, p: float, alpha: float = 0.05) -> int:
    """The smallest c with P(Binomial(n, p) >= c) <= alpha: fewer correct answers than this could
    come from answering at chance."""
    for c in range(n + 1):
        tail = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(c, n + 1))
        if tail <= alpha:
            return c
    return n + 1


def test_every_domain_clearly_above_chance(suite_run):
    result, _ = suite_run
    for domain, (correct, total) in result.per_domain.items():
        p = max(_chance_accuracy(domain), 1 / 320)   # 320 pairs: below that an estimate of 0 is unknown
        need = _min_correct_above_chance(total, p)
        assert 1 <= need <= total, (domain, p, need)   # the bound can fail and can be met
        assert correct >= need, f"{domain}: {correct}/{total} correct, chance {p:.3f} needs >= {need}"


# ---- calibration files ------------------------------------------------------------------------

@pytest.mark.parametrize("domain", toy_tasks.DOMAINS)
def test_toy_calibration_file_parses(domain):
    lines = (CALIB_DIR / f"toy-{domain}.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 32
    eval_prompts = {it.prompt for it in toy_tasks.generate(domain, 40, toy_tasks.EVAL_SEED)}
    for line in lines:
        row = json.loads(line)
        assert row["category"] == f"toy-{domain}"
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"]
        user, answer = row["messages"]
        if domain in toy_tasks.IMAGE_DOMAINS:    # the picture, then the question
            assert [p["type"] for p in user["content"]] == ["image", "text"]
            assert (CALIB_DIR / user["content"][0]["image"]).is_file()
        else:
            assert isinstance(user["content"], str) and user["content"]
        if domain == "tools":                    # declared tools, and the answer as a tool call
            assert len(row["tools"]) == 3 and answer["tool_calls"][0]["function"]["name"]
        else:
            assert isinstance(answer["content"], str) and answer["content"]
    # fixed table / few phrasings (a tools request is short; its offered tools differ): repeats by design
    if domain not in ("facts", "tools") + toy_tasks.IMAGE_DOMAINS:
        calib_prompts = {json.loads(line)["messages"][0]["content"] for line in lines}
        assert len(calib_prompts & eval_prompts) <= 2
