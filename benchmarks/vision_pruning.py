"""Vision under pruning on the bundled model: text-only calibration vs calibration with images.

  python benchmarks/vision_pruning.py                      # 40 image items per domain, 20 text items per domain
  python benchmarks/vision_pruning.py --image-items 60 --ratios 0.25,0.5,0.625

Two REAP calibrations of the same size per category: the five text domains only, and the same plus the
three image domains (toy-shapes, toy-counting, toy-position: pictures + questions). For each and each
ratio: accuracy on the image tasks and on the text tasks (greedy, program-checked, 95% Wilson intervals)
and the fidelity of image answers to the original (reap_core.vision_eval). Writes
benchmarks/results/vision_pruning.json and assets/demo/vision-pruning.json (shown in the app's Evaluate step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from reap_core.calibration import build_calibration  # noqa: E402
from reap_core.model import BUNDLED_MODEL, load_model  # noqa: E402
from reap_core.observer import observe  # noqa: E402
from reap_core.toy_tasks import IMAGE_DOMAINS, TEXT_DOMAINS  # noqa: E402
from reap_core.vision_eval import vision_under_pruning  # noqa: E402

DEMO_FILE = ROOT / "assets" / "demo" / "vision-pruning.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=BUNDLED_MODEL)
    ap.add_argument("--samples-per-category", type=int, default=32)
    ap.add_argument("--ratios", default="0.25,0.5,0.625")
    ap.add_argument("--image-items", type=int, default=40)
    ap.add_argument("--text-items", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vision_pruning.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    specs = {"text only": "builtin:" + ",".join(f"toy-{d}" for d in TEXT_DOMAINS),
             "text + images": "builtin:" + ",".join(f"toy-{d}" for d in TEXT_DOMAINS + IMAGE_DOMAINS)}
    stats = {}
    for name, spec in specs.items():
        calib = build_calibration(spec, loaded.tokenizer, max_tokens=512, samples_per_category=args.samples_per_category,
                                  processor=loaded.processor)
        stats[name] = observe(loaded, calib, batch_size=8)
        print(f"calibration '{name}': {len(calib.token_ids)} samples, {calib.num_images} images, "
              f"{calib.num_tokens} tokens", flush=True)
    ratios = [float(r) for r in args.ratios.split(",")]
    report = vision_under_pruning(loaded, stats, ratios, args.image_items, args.text_items,
                                  progress=lambda msg: print(f"  {msg}", flush=True))
    elapsed = time.perf_counter() - t0
    print(report.format_table())
    result = report.to_dict()
    result["settings"].update(model=args.model, samples_per_category=args.samples_per_category,
                              seconds=round(elapsed, 1), machine=f"{platform.machine()}, {os.cpu_count()} cores",
                              torch=torch.__version__)
    for path in (Path(args.out), DEMO_FILE):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{elapsed:.0f} s; wrote {args.out} and {DEMO_FILE}")


if __name__ == "__main__":
    main()
