"""Write assets/flagships.json: the size of every flagship whose config we hold, for the app's model picker.

The app cannot download a config when it starts (it may be offline, and a dozen Hub calls at import
would be slow), so the sizes are measured here once, the same way `python -m reap_core info` measures
them: the config alone, the model built on the meta device, `sizing.count_params` + `sizing.size_at`.
The configs are the fixtures in tests/fixtures (their sources: tests/fixtures/configs/SOURCES.md).

    python scripts/flagship_sizes.py            # rewrite assets/flagships.json
    python scripts/flagship_sizes.py --check    # exit 1 if the file differs from a fresh count

tests/test_flagships.py recounts and compares, so the file cannot drift from the fixtures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures"
OUT = ROOT / "assets" / "flagships.json"
# fixture folder -> Hub id (the table in tests/fixtures/configs/SOURCES.md)
FIXTURE_IDS = {
    "gemma-4-26b-a4b-config": "google/gemma-4-26b-a4b-it",
    "configs/qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B",
    "configs/qwen3-coder-480b-a35b": "Qwen/Qwen3-Coder-480B-A35B-Instruct",
    "configs/qwen3-coder-30b-a3b": "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    "configs/glm-4.5-air": "zai-org/GLM-4.5-Air",
    "configs/glm-4.6": "zai-org/GLM-4.6",
    "configs/gpt-oss-20b": "openai/gpt-oss-20b",
    "configs/mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "configs/olmoe-1b-7b": "allenai/OLMoE-1B-7B-0924",
    "configs/qwen3-coder-next": "Qwen/Qwen3-Coder-Next",
    "configs/deepseek-v3": "deepseek-ai/DeepSeek-V3",
    "configs/minimax-m2": "MiniMaxAI/MiniMax-M2",
}


def measure(folder: Path) -> dict:
    """What `info` says about one config: family, total and active parameters at full size, experts."""
    from reap_core.adapters import find_adapter
    from reap_core.model import load_config
    from reap_core.sizing import checkpoint_format, count_params, size_at

    config = load_config(str(folder))
    adapter = find_adapter(config)
    counts = count_params(config, adapter)
    size = size_at(counts, counts.num_experts, checkpoint_format(config))
    return {"family": adapter.layout.family, "total_params": size.total_params,
            "active_params": size.active_params, "experts": counts.num_experts, "top_k": counts.top_k,
            "layers": adapter.num_layers(config),
            "largest_layer_params": counts.largest_layer, "hidden_size": counts.hidden_size,
            "routed_expert_params": counts.moe_layers * counts.num_experts * counts.expert_mlp_params,
            "experts_converted_at_load": bool(adapter.layout.checkpoint_expert_lists),
            "checkpoint_format": checkpoint_format(config), "checkpoint_bytes": size.bytes,
            "fixture": str(folder.relative_to(ROOT))}


ABOUT = ("Sizes of flagship MoE models for the app's model picker, measured from their configs alone "
         "(the fixtures named per model) by scripts/flagship_sizes.py, as `python -m reap_core info` measures them: "
         "total and active parameters of the full model (active = per token, embeddings included).")


def measure_all() -> dict:
    models = {hub_id: measure(FIXTURES / folder)
              for folder, hub_id in sorted(FIXTURE_IDS.items(), key=lambda kv: kv[1].lower())}
    return {"about": ABOUT, "models": models}


def render(table: dict) -> str:
    return json.dumps(table, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with assets/flagships.json, write nothing")
    args = parser.parse_args(argv)
    text = render(measure_all())
    if args.check:
        same = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT.relative_to(ROOT)} {'is up to date' if same else 'differs from a fresh count'}")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}: {len(FIXTURE_IDS)} flagships")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
