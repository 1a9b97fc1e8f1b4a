"""GLM-4.5 / 4.6 / 4.7 and GLM-4.5-Air: layout as data.

The router is DeepSeek-V3's (sigmoid scores, selection on scores + e_score_correction_bias, gate =
the chosen sigmoid scores renormalised over the k, times `routed_scaling_factor`), with one group
(`n_group` = 1). Shared experts (`mlp.shared_experts`) are never pruned; the first
`first_k_dense_replace` layers are dense. Checkpoints store one tensor per expert. The multi-token
prediction layer some checkpoints carry (`num_nextn_predict_layers`) is not part of the model
transformers builds, and is exported unchanged.
"""

from __future__ import annotations

from dataclasses import replace

from .base import register_adapter
from .deepseek_v3 import DEEPSEEK_V3_LAYOUT, DeepseekV3Adapter

GLM4_MOE_LAYOUT = replace(
    DEEPSEEK_V3_LAYOUT,
    family="glm4_moe",
    model_types=("glm4_moe",),
    gate_definition=("sigmoid score of the expert (selection adds e_score_correction_bias; the gate does not), "
                     "renormalised over the top-k, times routed_scaling_factor: the weight GLM-4.5 applies to the "
                     "expert's output"),
    flagships=("zai-org/GLM-4.5-Air", "zai-org/GLM-4.6", "zai-org/GLM-4.5"),
)


class Glm4MoeAdapter(DeepseekV3Adapter):      # same router, same dense-layer rule (first_k_dense_replace)
    layout = GLM4_MOE_LAYOUT


GLM4_MOE = register_adapter(Glm4MoeAdapter())
