"""benchmarks/gpu_check.sh runs at a tiny size on CPU with only what the GPU machine has: gradio,
plotly and datasets are shadowed by packages that refuse to import."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_tiny_on_cpu_without_ui_packages(tmp_path):
    stubs = tmp_path / "stubs"
    for name in ("gradio", "plotly", "datasets"):
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    out = tmp_path / "figures.json"
    env = {**os.environ, "PYTHONPATH": str(stubs), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", "--json", str(out),
                          "--export-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for heading in ("[observer]", "[chat]", "[export]", "[qwen3] Qwen3MoeForCausalLM", "observing forward",
                    "one batched generate"):
        assert heading in run.stdout
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu"
    assert len(figures["observer"]) == 7 and all(v["ms"] > 0 for v in figures["observer"].values())
    assert len(figures["qwen3"]) == 7 and all(v["ms"] > 0 for v in figures["qwen3"].values())
    assert figures["chat"]["batched_over_separate"] > 0
    assert figures["export"]["written_bytes"] < figures["export"]["source_bytes"]      # 20% of experts dropped
    assert not list(tmp_path.glob("reap-export-bench-*"))                             # cleaned up
