"""Write the toy domain calibration sets: assets/calibration/toy-<domain>.jsonl.

    python scripts/make_toy_calibration.py            # 64 samples per domain (the bundled files)

What enters: a seed and a count. What leaves: one JSONL file per toy domain, each line
{"category": "toy-<domain>", "messages": [{"role": "user", ...}, {"role": "assistant", ...}]} (plus
"tools" for the tools domain), and for the image domains the pictures, images/toy-<domain>-NNN.png,
named in the user message as {"type": "image", "image": "images/..."} — the .jsonl image format.
The engine's `builtin:toy-<domain>` calibration spec loads these files.

The seed (toy_tasks.CALIBRATION_SEED) differs from the training and eval seeds. Calibration items
come from the same distribution as training (that is the point of calibration data); the eval
suite uses its own seed, so the measured accuracy is on items the calibration never showed.
Output is byte-identical for the same seed and count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reap_core import toy_tasks  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(ROOT / "assets" / "calibration"))
    p.add_argument("--per-domain", type=int, default=64)
    p.add_argument("--seed", type=int, default=toy_tasks.CALIBRATION_SEED)
    args = p.parse_args()

    out_dir = Path(args.out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for domain in toy_tasks.DOMAINS:
        path = out_dir / f"toy-{domain}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for n, item in enumerate(toy_tasks.generate(domain, args.per_domain, args.seed)):
                messages = toy_tasks.to_messages(item)
                if item.image is not None:
                    picture = f"images/toy-{domain}-{n:03d}.png"
                    item.image.save(out_dir / picture, optimize=True)
                    messages[0]["content"][0] = {"type": "image", "image": picture}
                line = {"category": f"toy-{domain}", "messages": messages}
                if item.tools:
                    line["tools"] = list(item.tools)
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        print(f"wrote {args.per_domain} samples to {path}")


if __name__ == "__main__":
    main()
