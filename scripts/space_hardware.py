"""The Space hardware each flagship needs for calibration, from the measured sizes in assets/flagships.json.

    python scripts/space_hardware.py            # print the Markdown table (README, "On a Space")
    python scripts/space_hardware.py --check    # exit 1 if README.md's table differs from a fresh one

Arithmetic only (bf16 weights, 2 bytes a parameter), for the reference calibration of 512 samples ×
256 tokens (131,072 tokens):
- one pass: the whole model on the GPUs in bf16 (85% of their memory, the rest for activations);
- layer by layer (reap_core/sequential.py): the largest decoder layer on one GPU, the calibration's
  hidden states (tokens × hidden × 2 B) and one layer in transit in the host's memory, and on disk the
  Hub download (the checkpoint's own format) + the experts transformers converts at load (checkpoints storing one tensor per expert
  are fused and written to the offload folder) + a 50% export;
- ZeroGPU: each `spaces.GPU` call gets 70 GB ("large", half an H200) or 141 GB ("xlarge"); layer by
  layer there is one call for the recording pass and one per decoder layer.
The dedicated Spaces are the Hub's GPU hardware list (huggingface.co/docs/hub/spaces-gpus), cheapest first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGSHIPS = ROOT / "assets" / "flagships.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- space-hardware: begin -->", "<!-- space-hardware: end -->"

GB = 1e9
TOKENS = 512 * 256
USABLE = 0.85           # of a GPU's memory, as sequential.weights_fit
ZERO_GPU = {"large": 70, "xlarge": 141}
# (name, GPUs, GB per GPU, host GB, disk GB), cheapest first
SPACES = [("1× L4", 1, 24, 30, 400), ("1× L40S", 1, 48, 62, 380), ("A100 large", 1, 80, 142, 1000),
          ("4× L40S", 4, 48, 382, 3200), ("8× L40S", 8, 48, 1534, 6500)]


def needs(m: dict) -> dict:
    weights = m["total_params"] * 2 / GB
    layer = m["largest_layer_params"] * 2 / GB
    converted = m["routed_expert_params"] * 2 / GB if m["experts_converted_at_load"] else 0.0
    download = m["checkpoint_bytes"] / GB
    export = weights - m["routed_expert_params"] / GB                      # half the experts, in bf16
    return {"weights": weights, "layer": layer, "hidden": TOKENS * m["hidden_size"] * 2 / GB, "download": download,
            "disk_one_pass": download + export, "disk_layered": download + converted + export}


def smallest_space(n: dict, layered: bool) -> str:
    for name, gpus, per_gpu, host, disk in SPACES:
        if layered:
            fits = (n["layer"] <= USABLE * per_gpu and n["hidden"] + n["layer"] <= 0.8 * host
                    and n["disk_layered"] <= disk)
        else:
            fits = n["weights"] <= USABLE * gpus * per_gpu and n["disk_one_pass"] <= disk
        if fits:
            return name
    return "none listed"


def zero_gpu(n: dict, layers: int) -> str:
    for size, gb in ZERO_GPU.items():
        if n["weights"] <= USABLE * gb:
            return f"one pass ({size})"
    if n["layer"] <= USABLE * ZERO_GPU["large"]:
        return f"layer by layer, {1 + layers} calls"
    return "no"


def table(flagships: dict) -> str:
    rows = ["| model | checkpoint | bf16 weights | largest layer | hidden states | ZeroGPU | smallest Space, one pass "
            "| smallest Space, layer by layer | disk, layer by layer |",
            "|---|---:|---:|---:|---:|---|---|---|---:|"]
    for hub_id, m in sorted(flagships.items(), key=lambda kv: kv[1]["total_params"]):
        n = needs(m)
        rows.append(f"| {hub_id} | {m['checkpoint_format']} {n['download']:,.0f} GB | {n['weights']:,.0f} GB | {n['layer']:.1f} GB | {n['hidden']:.1f} GB "
                    f"| {zero_gpu(n, m['layers'])} | {smallest_space(n, False)} | {smallest_space(n, True)} "
                    f"| {n['disk_layered']:,.0f} GB |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the table in README.md")
    args = parser.parse_args(argv)
    text = table(json.loads(FLAGSHIPS.read_text())["models"])
    if not args.check:
        print(text, end="")
        return 0
    readme = README.read_text()
    current = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip() + "\n" if BEGIN in readme else ""
    same = current == text
    print(f"README.md's Space hardware table {'is up to date' if same else 'differs: rerun and paste'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
