"""The bundled model's demo pack: prompts it answers right, and results precomputed for its default calibration.

On stage the machine is busy: calibrating the bundled model on its default data takes one to two
minutes on 2 CPU cores, a fidelity sweep and the evaluations a few more. `scripts/precompute_demo.py`
runs all of them once with the same public functions the app calls and stores the results in
`assets/demo/` (a small JSON file and the statistics `.npz`). The app serves a stored result only
when it is the result of exactly the same work:

  - the model's weights are the same bytes (sha256 of its safetensors files),
  - the calibration is the same tokens (CalibrationSet / ExpertStats fingerprint),
  - the held-out set is the same (HeldOut fingerprint), the plans keep the same experts, and the
    sweep's ratios and criteria are among those stored;

and always says that the result is precomputed. Anything else is measured live.

What enters: a LoadedModel, statistics, plans. What leaves: ExpertStats, FidelityResult,
GenerationReport, TaskReport as if freshly computed, plus a `note` saying where they came from.
No gradio here; the examples are data the app shows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .eval_defaults import is_bundled
from .fidelity import FidelityResult
from .generation_quality import GenerationReport
from .heldout import HeldOut
from .model import ASSETS_DIR, LoadedModel
from .plan import PruningPlan
from .stats import ExpertStats
from .task_eval import TaskReport

DEMO_DIR = ASSETS_DIR / "demo"
PACK_FILE = DEMO_DIR / "toy-gemma4-moe.json"
STATS_FILE = DEMO_DIR / "toy-gemma4-moe-default-stats.npz"
FORMAT = 1

# The app's defaults for the bundled model (step 2): every toy domain, 16 samples each, 256 tokens.
DEFAULT_CALIBRATION = dict(spec="builtin:toy-*", samples_per_category=16, max_tokens=256, batch_size=4)
# The prunes whose generation quality and task accuracy are stored (criterion, ratio).
EVAL_PLANS = (("reap", 0.25), ("reap", 0.5), ("reap", 0.75))
# The ratios at which the stored example answers were generated (REAP, default calibration).
EXAMPLE_RATIOS = (0.5, 0.75)


@dataclass(frozen=True)
class Example:
    domain: str
    prompt: str


# Chosen by running the bundled model (scripts/precompute_demo.py prints and stores every answer):
# the original answers each one right, and REAP pruning at 50% or 75% visibly changes the answer.
# (No tools example: a tool call needs tools declared in the system turn, which a typed prompt cannot.)
EXAMPLES = (
    Example("code", "Python: define `compute_count(a, b)`, which returns the smaller of a and b."),
    Example("translation", "Spanish, please: The new window opens a black fish."),
    Example("facts", "Name the capital city of Greece."),
    Example("math", "Ana has 5 bags with 5 shells in each bag. How many shells does Ana have?"),
)
KNOWS = ("It knows only eight toy tasks — two-digit math word problems (worked column by column; with thinking "
         "on, in its thought channel), small Python functions, Gemma 4 tool calls, facts from a table (capitals, "
         "continents, chemical symbols), English → Spanish, and three questions about simple pictures (shape and "
         "colour, counting, position) — and answers anything else with nonsense.")


def weights_sha256(folder: str | Path) -> str:
    """sha256 over the model's safetensors files (name and bytes), in name order."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return ""
    return _sha_files(tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files))


@lru_cache(maxsize=8)
def _sha_files(files: tuple[tuple[str, int, int], ...]) -> str:   # (path, mtime, size): re-read when changed
    h = hashlib.sha256()
    for path, _mtime, _size in files:
        h.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class DemoPack:
    """What scripts/precompute_demo.py stored. `examples`: domain, prompt and the answers it measured."""
    model_sha256: str
    calibration: dict                 # DEFAULT_CALIBRATION + fingerprint + tokens
    created: str                      # when and where it was measured (shown with every result)
    fidelity: dict | None = None      # {"heldout_fingerprint", "result": FidelityResult.to_dict()}
    evals: list[dict] = field(default_factory=list)   # {criterion, ratio, kept, generation, tasks}
    examples: list[dict] = field(default_factory=list)
    stats_file: str = ""

    def to_dict(self) -> dict:
        return dict(format=FORMAT, model_sha256=self.model_sha256, calibration=self.calibration, created=self.created,
                    stats_file=self.stats_file, fidelity=self.fidelity, evals=self.evals, examples=self.examples)

    @classmethod
    def from_dict(cls, d: dict) -> "DemoPack":
        if d.get("format") != FORMAT:
            raise ValueError(f"demo pack format {d.get('format')!r}, expected {FORMAT}")
        return cls(model_sha256=d["model_sha256"], calibration=d["calibration"], created=d["created"],
                   fidelity=d.get("fidelity"), evals=d.get("evals", []), examples=d.get("examples", []),
                   stats_file=d.get("stats_file", ""))

    def save(self, path: Path = PACK_FILE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)

    @property
    def note(self) -> str:
        return f"precomputed for the default calibration ({self.created})"


def load_pack(path: Path = PACK_FILE) -> DemoPack | None:
    """The stored pack, or None when there is none or it cannot be read (then everything is live)."""
    try:
        return DemoPack.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pack_for(loaded: LoadedModel, pack: DemoPack | None) -> DemoPack | None:
    """The pack if it was measured on exactly this model's weights, else None."""
    if pack is None or not is_bundled(loaded) or not loaded.read_from:
        return None
    return pack if weights_sha256(loaded.read_from) == pack.model_sha256 else None


def precomputed_stats(loaded: LoadedModel, calibration_fingerprint: str, pack: DemoPack | None,
                      stats_path: Path = STATS_FILE) -> ExpertStats | None:
    """The stored statistics when the calibration has the same tokens and the model the same weights."""
    pack = pack_for(loaded, pack)
    if pack is None or pack.calibration.get("fingerprint") != calibration_fingerprint:
        return None
    try:
        stats = ExpertStats.load(stats_path)
        stats.check_matches(loaded.moe_layer_indices, loaded.num_experts, loaded.top_k)
    except Exception:   # noqa: BLE001 — a missing or damaged file: calibrate live instead
        return None
    return stats if stats.fingerprint() == calibration_fingerprint else None


def _same_calibration(pack: DemoPack, stats: ExpertStats) -> bool:
    return bool(stats.fingerprint()) and pack.calibration.get("fingerprint") == stats.fingerprint()


def precomputed_sweep(loaded: LoadedModel, stats: ExpertStats, heldout: HeldOut, ratios, criteria,
                      pack: DemoPack | None) -> FidelityResult | None:
    """The stored sweep restricted to `criteria`, if it measured the same data at the same ratios."""
    pack = pack_for(loaded, pack)
    if pack is None or not pack.fidelity or not _same_calibration(pack, stats):
        return None
    if pack.fidelity.get("heldout_fingerprint") != heldout.fingerprint():
        return None
    result = FidelityResult.from_dict(pack.fidelity["result"])
    wanted = sorted({round(float(r), 9) for r in ratios})
    if wanted != sorted(result.ratios) or not criteria or not set(criteria) <= set(result.criteria):
        return None
    result.criteria = [c for c in criteria]
    result.points = [p for p in result.points if p.criterion in criteria]
    result.timing = {**result.timing, "precomputed": pack.created}
    return result


def precomputed_eval(kind: str, loaded: LoadedModel, stats: ExpertStats, plan: PruningPlan,
                     pack: DemoPack | None) -> GenerationReport | TaskReport | None:
    """Stored generation quality ("generation") or task accuracy ("tasks") of the same prune."""
    pack = pack_for(loaded, pack)
    if pack is None or not _same_calibration(pack, stats) or plan.protected or plan.categories:
        return None
    for entry in pack.evals:
        if (entry["criterion"] == plan.criterion and abs(entry["ratio"] - plan.compression_ratio) < 1e-9
                and [tuple(k) for k in entry["kept"]] == [tuple(k) for k in plan.kept] and entry.get(kind)):
            d = entry[kind]
            return GenerationReport.from_dict(d) if kind == "generation" else TaskReport(**d)
    return None
