"""Shared fixtures: tiny random Gemma 4 MoE models (both classes), a char tokenizer, calibration data."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")       # no test touches the real network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(2)

from reap_core.calibration import Sample, tokenize_samples  # noqa: E402
from reap_core.model import wrap_model  # noqa: E402
from reap_core.tiny import build_tiny_model, char_tokenizer  # noqa: E402

GEMMA4_26B_CONFIG_DIR = ROOT / "tests" / "fixtures" / "gemma-4-26b-a4b-config"


def run_at_once(work: dict, repeats: int) -> dict:
    """Run every work item `repeats` times, each item in its own thread, all starting together
    (a barrier); {key: [results]}. An exception in any thread fails the calling test."""
    import threading

    results, errors = {key: [] for key in work}, []
    barrier = threading.Barrier(len(work))

    def worker(key):
        try:
            barrier.wait()
            results[key] = [work[key]() for _ in range(repeats)]
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


def _samples():
    texts = ["The quick brown fox jumps over the lazy dog. " * 3, "def add(a, b):\n    return a + b\n",
             "12 + 30 = 42; 7 * 6 = 42.", "Paris is the capital of France.", "x" * 90, "short"]
    samples = [Sample("prose" if i % 2 else "code", text=t) for i, t in enumerate(texts)]
    samples += [Sample("chat", messages=({"role": "user", "content": f"question {i}?"},
                                         {"role": "assistant", "content": "answer " * (i + 1)})) for i in range(5)]
    return samples


@pytest.fixture(scope="session")
def calib(tokenizer):
    return tokenize_samples(_samples(), tokenizer, max_tokens=80, spec="test")


@pytest.fixture(scope="session", params=["causal", "multimodal"])
def tiny(request, tokenizer):
    """A LoadedModel around a tiny random Gemma 4 MoE, once per class."""
    model = build_tiny_model(request.param, vocab_size=len(tokenizer))
    return wrap_model(model, tokenizer, model_id=f"tiny-{request.param}")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny text-only model saved to disk with its tokenizer (for CLI and loading tests)."""
    path = tmp_path_factory.mktemp("tiny-causal")
    build_tiny_model("causal", vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "data.jsonl"
    rows = [{"text": "alpha beta gamma " * (i + 1), "category": "greek"} for i in range(4)]
    rows += [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello " * i}]}
             for i in range(1, 4)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path
