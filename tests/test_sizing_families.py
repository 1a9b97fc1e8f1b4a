"""Sizing from config alone on the real flagship configs (tests/fixtures/configs, sources in its
SOURCES.md), against the parameter counts their makers and the published REAP prunes state
(tests/fixtures/published_reap.json). Meta-device builds: no weights, ~1 s for all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reap_core.adapters import find_adapter
from reap_core.model import load_config
from reap_core.plan import experts_to_prune
from reap_core.sizing import count_params, size_at

FIXTURES = Path(__file__).parent / "fixtures"
CONFIGS = FIXTURES / "configs"
# fixture -> (family, total B, active B) as the model makers state them (model cards); the active figure only
# where the card counts what we count (embeddings and LM head included): GLM's, MiniMax's, gpt-oss's and
# Qwen3-Next's stated active counts leave them out (GLM-4.5-Air: 13.42B with, 12.2B without; stated 12B)
STATED = {"qwen3-30b-a3b": ("qwen3_moe", 30.5, 3.3), "qwen3-coder-30b-a3b": ("qwen3_moe", 30.5, 3.3),
          "qwen3-coder-480b-a35b": ("qwen3_moe", 480, 35), "glm-4.5-air": ("glm4_moe", 106, None),
          "glm-4.6": ("glm4_moe", 355, None), "gpt-oss-20b": ("gpt_oss", 21, None), "mixtral-8x7b": ("mixtral", 46.7, 12.9),
          "olmoe-1b-7b": ("olmoe", 6.9, 1.3), "qwen3-coder-next": ("qwen3_next", 80, None),
          "deepseek-v3": ("deepseek_v3", 671, 37), "minimax-m2": ("minimax_m2", 230, None)}


@pytest.fixture(scope="module")
def counts():
    out = {}
    for name in STATED:
        config = load_config(str(CONFIGS / name))
        out[name] = (find_adapter(config), count_params(config))
    return out


def _billions(text: str) -> float:
    return float(text.strip("~").rstrip("B"))


@pytest.mark.parametrize("name", sorted(STATED))
def test_flagship_sizes_match_their_model_cards(counts, name):
    family, total, active = STATED[name]
    adapter, c = counts[name]
    assert adapter.layout.family == family
    full = size_at(c, c.num_experts)
    # within 1%: cards round, and some count the multi-token-prediction layer transformers does not build
    # (GLM-4.6: 355B stated, 352.8B built)
    assert abs(full.total_params / 1e9 - total) <= 0.01 * total + 0.05
    if active is not None:
        assert abs(full.active_params / 1e9 - active) <= 0.06 * active


def test_published_reap_prunes_are_reproduced(counts):
    rows = [r for r in json.loads((FIXTURES / "published_reap.json").read_text()) if r["fixture"] in STATED
            and (r["experts_kept_per_layer"] or r["compression_ratio"])]
    assert len(rows) >= 10
    for row in rows:
        _, c = counts[row["fixture"]]
        kept = row["experts_kept_per_layer"]
        if row["compression_ratio"]:
            from_ratio = c.num_experts - experts_to_prune(c.num_experts, row["compression_ratio"])
            assert kept is None or kept == from_ratio, row["pruned_id"]
            kept = from_ratio
        ours = size_at(c, kept).total_params / 1e9
        published = _billions(row["published_total"])
        assert abs(ours - published) < min(1.0, 0.01 * published), (row["pruned_id"], ours, published)


def test_quantised_checkpoints_are_sized_in_their_own_format(counts):
    from reap_core.sizing import checkpoint_format

    expected = {"deepseek-v3": "FP8", "minimax-m2": "FP8", "gpt-oss-20b": "MXFP4", "qwen3-30b-a3b": "BF16"}
    for name, fmt in expected.items():
        assert checkpoint_format(load_config(str(CONFIGS / name))) == fmt
    _, c = counts["gpt-oss-20b"]
    # openai/gpt-oss-20b on the Hub: 13.8 GB of safetensors (MXFP4 experts, BF16 everything else)
    assert abs(size_at(c, c.num_experts, "MXFP4").bytes / 1e9 - 13.8) < 0.3
    _, c = counts["deepseek-v3"]
    assert size_at(c, c.num_experts, "FP8").bytes == c.total      # one byte per parameter
