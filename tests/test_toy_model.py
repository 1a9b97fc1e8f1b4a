"""The bundled toy Gemma 4 MoE (assets/toy-gemma4-moe), its tasks and its calibration sets.

Loads the model offline with the Auto classes, checks its chat format, a few greedy answers,
a small eval run against the accuracy recorded at training time, and the toy calibration files.
"""

from __future__ import annotations

import json
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

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    return model.eval(), tokenizer


# ---- tasks (no model) -------------------------------------------------------------------------

@pytest.mark.parametrize("domain", toy_tasks.DOMAINS)
def test_checker_accepts_reference_and_rejects_other_answers(domain):
    items = toy_tasks.generate(domain, 30, seed=1)
    assert all(toy_tasks.check(domain, it, it.answer) for it in items)
    # Another item's answer must (almost always) be wrong: the checker really checks.
    wrong = sum(toy_tasks.check(domain, it, items[(i + 1) % 30].answer) for i, it in enumerate(items))
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
    model, tokenizer = toy
    cfg = model.config
    assert type(model).__name__ == "Gemma4ForCausalLM"
    assert cfg.enable_moe_block and cfg.num_experts >= 32 and cfg.top_k_experts >= 4
    assert {"sliding_attention", "full_attention"} <= set(cfg.layer_types)
    assert cfg.layer_types[-1] == "full_attention"
    size = sum(f.stat().st_size for f in MODEL_DIR.iterdir() if f.is_file())
    assert size <= 40 * 2**20


def test_chat_template_is_gemma4_turn_format(toy):
    _, tokenizer = toy
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
         {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}],
        add_generation_prompt=True, tokenize=False)
    assert text == ("<bos><|turn>system\nS<turn|>\n<|turn>user\nU<turn|>\n<|turn>model\nA<turn|>\n"
                    "<|turn>user\nV<turn|>\n<|turn>model\n")
    for tok in ["<bos>", "<eos>", "<pad>", "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>"]:
        assert len(tokenizer(tok, add_special_tokens=False)["input_ids"]) == 1, tok
    assert tokenizer.pad_token == "<pad>"


def test_generation_answers_in_domain_prompts(toy):
    model, tokenizer = toy
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


def test_run_suite_matches_recorded_accuracy(toy):
    model, tokenizer = toy
    recorded = json.loads((MODEL_DIR / "training_args.json").read_text())["eval"]
    seen = []
    result = run_suite(model, tokenizer, "toy", items_per_domain=8, batch_size=20,
                       progress=lambda done, total: seen.append((done, total)))
    assert isinstance(result, SuiteResult)
    assert seen[-1] == (40, 40)
    assert set(result.per_domain) == set(toy_tasks.DOMAINS)
    # 8 items per domain is noisy: compare loosely with the 40-item numbers from training.
    assert result.mean_accuracy >= recorded["mean_accuracy"] - 0.2
    for domain, (correct, total) in result.per_domain.items():
        assert total == 8
        assert correct / total >= recorded["per_domain"][domain]["accuracy"] - 0.4, domain
    assert "mean" in result.format_table()
    assert result.to_dict()["per_domain"]["math"]["total"] == 8


def test_every_domain_clearly_above_chance():
    recorded = json.loads((MODEL_DIR / "training_args.json").read_text())["eval"]
    assert all(v["accuracy"] >= 0.2 for v in recorded["per_domain"].values())


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
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])
    if domain != "facts":  # facts ask about one fixed table, so prompts may repeat by design
        calib_prompts = {json.loads(line)["messages"][0]["content"] for line in lines}
        assert len(calib_prompts & eval_prompts) <= 2
