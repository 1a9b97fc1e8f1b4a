"""reap_core — REAP expert pruning for Mixture-of-Experts LLMs, Gemma 4 first. No UI code here.

Flow (one module per stage, data objects between them):
  model.load_model -> calibration.build_calibration -> observer.observe (ExpertStats)
  -> saliency.compute_scores -> plan.make_plan (PruningPlan)
  -> masking.masked_view / masked_rows (chat.stream_variants, fidelity: per-row plans in one batch;
     generation_quality, task_eval) |
     export.export_pruned -> hub.push_folder
"""

__version__ = "0.1.0"
