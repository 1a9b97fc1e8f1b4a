"""The adapter interface: everything REAP needs to know about one MoE model family.

The engine never touches a family's modules directly; it asks the adapter. Most of an adapter
is data (`MoELayout`: where the decoder layers live, which tensors hold experts and along which
axis, which config keys count them); the class adds the few operations that need code
(masking routers, slicing experts, observing routed expert outputs).

Shape legend used across reap_core: T tokens, E experts, K top-k, H hidden, I expert width,
L layers, S = T*K routed (token, expert) pairs.
"""

from __future__ import annotations

import functools
import re
import types
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from ..errors import UnsupportedModel
from .kernels import KERNELS, loop_experts_forward, observer_kernel_name
from .routing import NEG_INF, RULES

SORTED_IMPLEMENTATION = "reap_sorted"      # the CPU loop, registered as a transformers experts implementation
ALL_EXPERTS_FUNCTIONS.register(SORTED_IMPLEMENTATION, loop_experts_forward)


@dataclass(frozen=True)
class MoELayout:
    """Architecture knowledge as data: names and axes, no logic. Module paths are relative to one
    decoder layer of the loaded model; checkpoint names relative to that layer's key prefix."""

    family: str
    model_types: tuple[str, ...]          # config.model_type values this family uses
    expert_tensors: tuple[tuple[str, int], ...]  # (tensor name in a layer, expert axis) to slice
    num_experts_key: str                  # config key counting experts per layer
    expert_width_key: str                 # config key for one expert's intermediate width (I)
    gate_definition: str                  # what "gate" means for this family, for docs and recipes
    # where things are; the defaults are the decoder-only layout most families share
    router_module: str = "mlp.gate"       # the router: its forward returns (logits, top_k_weights, top_k_index)
    experts_module: str = "mlp.experts"   # module holding the fused expert weights
    top_k_key: str = "num_experts_per_tok"   # config key for experts per token
    layer_list_paths: tuple[str, ...] = ("model.layers",)   # attribute paths to the decoder layers, first match wins
    checkpoint_layer_prefixes: tuple[str, ...] = ("model.layers.{i}.",)  # key prefixes of layer N in a checkpoint
    text_config_attr: str | None = None   # sub-config holding the keys above, if multimodal
    non_text_prefixes: tuple[str, ...] = ()   # parameter prefixes outside the language model (vision, audio)
    # masking: a routing rule (routing.py) re-routes with pruned experts out of the selection; None =
    # mask the output of `router_logits_module` (a submodule whose logits go straight into a softmax)
    routing: str | None = None
    routing_options: tuple[tuple[str, Any], ...] = ()
    router_logits_module: str | None = None
    moe_switch_key: str | None = None     # boolean config key that turns the MoE block on, if the family has one
    shared_experts: tuple[str, ...] = ()  # always-on experts beside the routed ones: never pruned
    group_keys: tuple[str, str] | None = None   # (groups, groups chosen per token) keys of group-limited routing
    # checkpoints as on the Hub: per-expert lists ("mlp.experts" -> mlp.experts.{j}.gate_proj.weight ...)
    # and other names of expert tensors (fused, or renamed by transformers' conversion at load)
    checkpoint_expert_lists: tuple[str, ...] = ()
    checkpoint_expert_aliases: tuple[tuple[str, int], ...] = ()
    gate_up_interleaved: bool = False     # fused gate_up columns alternate gate, up (gpt-oss) instead of [gate; up]
    thinking_markers: tuple[str, str] | None = None   # (open, close) of the reasoning block in generated text
    end_of_turn_markers: tuple[str, ...] = ()          # text that ends the assistant's turn
    answer_marker: str | None = None      # header the answer follows, where the family has one (gpt-oss)
    flagships: tuple[str, ...] = ()       # Hub ids people prune, for the model picker


def get_by_path(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


class MoEAdapter:
    """Operations on one family, driven by its layout. Subclasses add the observer hook-up."""

    layout: MoELayout

    # --- config -------------------------------------------------------------------------
    def text_config(self, config: Any) -> Any:
        attr = self.layout.text_config_attr
        if attr and getattr(config, attr, None) is not None:
            return getattr(config, attr)
        return config

    def explain_unsupported(self, config: Any) -> str | None:
        """None if this adapter can prune the model, else a sentence saying why not.

        Decided from the config alone, before any weight is read. A dense config may still carry
        expert counts: Gemma 4 keeps `num_experts` / `top_k_experts` when `enable_moe_block` is
        false (the layers are then built without experts), so the switch is checked first."""
        text = self.text_config(config)
        switch = self.layout.moe_switch_key
        if switch and not getattr(text, switch, False):
            return (f"{self.layout.family} model without a Mixture-of-Experts block "
                    f"({switch}={getattr(text, switch, None)}): a dense model has no experts to prune")
        num_experts = getattr(text, self.layout.num_experts_key, None)
        top_k = getattr(text, self.layout.top_k_key, None)
        if not _positive_int(num_experts) or not _positive_int(top_k):
            return (f"{self.layout.family} model without a Mixture-of-Experts block "
                    f"({self.layout.num_experts_key}={num_experts}, {self.layout.top_k_key}={top_k}): "
                    f"a dense model has no experts to prune")
        if top_k > num_experts:
            return (f"{self.layout.family} config routes each token to {self.layout.top_k_key}={top_k} experts "
                    f"of only {self.layout.num_experts_key}={num_experts}: the config is inconsistent")
        return None

    def moe_layer_indices(self, config: Any) -> list[int]:
        """Decoder layers with an MoE block, from the config alone (checking statistics against a
        model before its weights are read). Default: every layer; families with dense layers override."""
        return list(range(self.num_layers(config)))

    def num_experts(self, config: Any) -> int:
        return int(getattr(self.text_config(config), self.layout.num_experts_key))

    def top_k(self, config: Any) -> int:
        return int(getattr(self.text_config(config), self.layout.top_k_key))

    def num_layers(self, config: Any) -> int:
        return int(self.text_config(config).num_hidden_layers)

    def expert_width(self, config: Any) -> int:
        return int(getattr(self.text_config(config), self.layout.expert_width_key))

    def set_num_experts(self, config: Any, n: int) -> None:
        setattr(self.text_config(config), self.layout.num_experts_key, int(n))

    def expert_groups(self, config: Any) -> int:
        """Groups of group-limited routing (DeepSeek-V3: 8), 1 without. A plan prunes the same number
        of experts in every group, so the groups survive slicing."""
        if not self.layout.group_keys:
            return 1
        return int(getattr(self.text_config(config), self.layout.group_keys[0], 1) or 1)

    def groups_chosen(self, config: Any) -> int:
        """Groups each token may pick its experts from (= all groups without group-limited routing)."""
        if not self.layout.group_keys:
            return 1
        return int(getattr(self.text_config(config), self.layout.group_keys[1], 1) or 1)

    def prepare(self, model: nn.Module) -> None:
        """Called once after loading: on CPU the per-expert loop is faster than torch's grouped_mm for
        prompts and calibration (benchmarks/observer_overhead.py); on GPUs transformers' default stays."""
        # layers offloaded to disk sit on the meta device: the first real parameter says where the model computes
        real = next((p for p in model.parameters() if p.device.type != "meta"), None)
        if real is not None and real.device.type == "cpu":
            model.set_experts_implementation(SORTED_IMPLEMENTATION)

    # --- modules ------------------------------------------------------------------------
    def layer_list(self, model: nn.Module) -> tuple[str, nn.ModuleList]:
        """(attribute path, the model's own ModuleList) of the decoder layers: the first path that exists."""
        for path in self.layout.layer_list_paths:
            try:
                return path, get_by_path(model, path)
            except AttributeError:
                continue
        raise UnsupportedModel(f"no decoder layers found at {self.layout.layer_list_paths} "
                               f"in {type(model).__name__}")

    def decoder_layers(self, model: nn.Module) -> list[nn.Module]:
        return list(self.layer_list(model)[1])

    def moe_layers(self, model: nn.Module) -> list[tuple[int, nn.Module]]:
        """(layer index, layer) for every layer that has an MoE block."""
        found = []
        for idx, layer in enumerate(self.decoder_layers(model)):
            try:
                get_by_path(layer, self.layout.experts_module)
            except AttributeError:
                continue
            found.append((idx, layer))
        return found

    def router(self, layer: nn.Module) -> nn.Module:
        return get_by_path(layer, self.layout.router_module)

    def shared_experts(self, layer: nn.Module) -> list[str]:
        """Names of the always-on experts of this layer (never pruned): shown as such in the app."""
        found = []
        for path in self.layout.shared_experts:
            try:
                get_by_path(layer, path)
            except AttributeError:
                continue
            found.append(path)
        return found

    # --- masking ------------------------------------------------------------------------
    def mask_target(self, layer: nn.Module) -> nn.Module:
        """The module a pruning mask is attached to (its `.weight` says the mask's device)."""
        if self.layout.routing is None:
            return get_by_path(layer, self.layout.router_logits_module)
        return self.router(layer)

    def install_masking(self, layer: nn.Module, lookup: Callable[[nn.Module, int], torch.Tensor | None]) -> None:
        """Make the layer's routing obey `lookup(target, n_tokens)`: a bool mask ([E], or [N, E] per
        token; True = pruned) or None for the model's own routing. Installed once per layer.

        With a routing rule the router's forward is replaced per instance by a dispatcher: no mask ->
        the router's own forward, untouched; a mask -> the rule, which removes pruned experts from
        what the selection sees (their bias included). Without one, the logits module's output is
        masked to -inf before the family's softmax."""
        target = self.mask_target(layer)
        if getattr(target, "_reap_masking", False):
            return
        if self.layout.routing is None:
            target.register_forward_hook(functools.partial(_mask_logits_output, lookup=lookup))
        else:
            rule = functools.partial(RULES[self.layout.routing], **dict(self.layout.routing_options))
            target.forward = types.MethodType(functools.partial(_masked_router_forward, rule=rule, lookup=lookup),
                                              target)
        target._reap_masking = True

    def experts(self, layer: nn.Module) -> nn.Module:
        return get_by_path(layer, self.layout.experts_module)

    # --- slicing ------------------------------------------------------------------------
    def slice_layer(self, layer: nn.Module, kept: list[int]) -> None:
        """Keep only `kept` experts (in this order) in one layer, in place (parameters stay
        parameters, buffers such as a selection bias stay buffers)."""
        for name, axis in self.layout.expert_tensors:
            owner_path, _, attr = name.rpartition(".")
            owner = get_by_path(layer, owner_path) if owner_path else layer
            tensor = getattr(owner, attr)
            index = torch.as_tensor(kept, dtype=torch.long, device=tensor.device)
            sliced = tensor.data.index_select(axis, index).contiguous()
            if attr in owner._buffers:
                owner._buffers[attr] = sliced
            else:
                setattr(owner, attr, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
        self.after_slice(layer, len(kept))

    def after_slice(self, layer: nn.Module, n_kept: int) -> None:
        """Update the counters kept beside the tensors. transformers' fused experts modules loop over
        `num_experts`: left stale, grouped_mm fails on the sliced tensors and the eager path silently
        indexes experts that are gone; grouped routers reshape their scores by it."""
        for module in (self.experts(layer), self.router(layer)):
            if hasattr(module, "num_experts"):
                module.num_experts = n_kept

    def checkpoint_expert_keys(self, layer_idx: int) -> dict[str, int]:
        """Checkpoint keys of layer `layer_idx` that hold all experts in one tensor, with their
        expert axis. Every known prefix and name is listed (multimodal and text-only naming, the
        model's and the checkpoint's), so the exporter matches whichever one the checkpoint uses."""
        keys = {}
        for prefix in self.layout.checkpoint_layer_prefixes:
            p = prefix.format(i=layer_idx)
            for name, axis in self.layout.expert_tensors + self.layout.checkpoint_expert_aliases:
                keys[p + name] = axis
        return keys

    def checkpoint_expert_lists(self, layer_idx: int) -> re.Pattern:
        """Matches a per-expert checkpoint key of layer `layer_idx` (`...layers.3.mlp.experts.17.w1.weight`):
        groups (head, expert id, tail)."""
        heads = [re.escape(prefix.format(i=layer_idx) + path + ".")
                 for prefix in self.layout.checkpoint_layer_prefixes for path in self.layout.checkpoint_expert_lists]
        return re.compile(f"^({'|'.join(heads) or '(?!)'})(\\d+)(\\..+)$")

    # --- observing ----------------------------------------------------------------------
    @contextmanager
    def observing(self, model: nn.Module, record: Callable[..., None]) -> Iterator[None]:
        """Within the block, every MoE forward in this thread calls
        record(layer, expert_ids[S], token_index[S], gates[S], out_norm[S], out_absmax[S])
        for the routed pairs only (||f_j(x)||_2 and max |f_j(x)|), with the model's outputs unchanged.

        The experts' forward is replaced per instance, once, by a dispatcher that runs the routed-only
        kernel (kernels.py) for the modules this thread observes and the model's own implementation
        for everyone else; the gate is what the router hands the experts module (`top_k_weights`)."""
        layers = self.moe_layers(model)
        for _, layer in layers:
            install_dispatch(self.experts(layer))
        current = dict(_OBSERVERS.get() or {})
        current.update({self.experts(layer): (idx, record) for idx, layer in layers})
        token = _OBSERVERS.set(current)
        try:
            yield
        finally:
            _OBSERVERS.reset(token)


def _mask_logits_output(module: nn.Module, inputs, output: torch.Tensor, lookup) -> torch.Tensor | None:
    mask = lookup(module, output.shape[:-1].numel())
    if mask is None:
        return None
    return output.masked_fill(mask.view(output.shape) if mask.dim() == 2 else mask, NEG_INF)


def _masked_router_forward(self: nn.Module, hidden_states: torch.Tensor, *args, rule, lookup):
    mask = lookup(self, hidden_states.numel() // hidden_states.shape[-1])
    if mask is None:   # no masked view in this thread: the router's own forward, untouched
        return type(self).forward(self, hidden_states, *args)
    return rule(mask, self, hidden_states, *args)


# experts module -> (layer index, record callback); per thread / per task, never global.
_OBSERVERS: ContextVar[dict[nn.Module, tuple[int, Callable[..., None]]] | None] = ContextVar(
    "reap_observers", default=None)


# experts module -> a function computing its output instead (merged experts, reap_core.merging); per thread.
EXPERT_OVERRIDES: ContextVar[dict[nn.Module, Callable[..., torch.Tensor]] | None] = ContextVar(
    "reap_expert_overrides", default=None)


def install_dispatch(experts: nn.Module) -> None:
    """Replace this experts module's forward, once, by the per-thread dispatcher below."""
    if not getattr(experts, "_reap_dispatch_installed", False):
        dispatcher = types.MethodType(_dispatching_forward, experts)
        if "_old_forward" in experts.__dict__ and hasattr(experts, "_hf_hook"):
            # an accelerate hook (layers offloaded to disk) wraps the forward: it brings the weights in, then
            # calls _old_forward — the dispatcher goes there, so the weights are in place when it runs
            experts._old_forward = dispatcher
        else:
            experts.forward = dispatcher
        experts._reap_dispatch_installed = True


def _dispatching_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                         top_k_weights: torch.Tensor) -> torch.Tensor:
    observers = _OBSERVERS.get()
    entry = observers.get(self) if observers else None
    if entry is None:  # not observed in this thread: an override (merged experts) or the model's own, untouched
        overrides = EXPERT_OVERRIDES.get()
        override = overrides.get(self) if overrides else None
        if override is not None:
            return override(hidden_states, top_k_index, top_k_weights)
        return type(self).forward(self, hidden_states, top_k_index, top_k_weights)
    layer, record = entry
    kernel = KERNELS[observer_kernel_name(self.down_proj.device, self.down_proj.dtype)]
    return kernel(self, hidden_states, top_k_index, top_k_weights, layer, record)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


ADAPTERS: dict[str, MoEAdapter] = {}


def register_adapter(adapter: MoEAdapter) -> MoEAdapter:
    ADAPTERS[adapter.layout.family] = adapter
    return adapter


def find_adapter(config: Any) -> MoEAdapter:
    """The adapter for a config, or UnsupportedModel naming what was found."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS.values():
        if model_type in adapter.layout.model_types:
            reason = adapter.explain_unsupported(config)
            if reason:
                raise UnsupportedModel(reason)
            return adapter
    supported = sorted(t for a in ADAPTERS.values() for t in a.layout.model_types)
    arch = ", ".join(getattr(config, "architectures", None) or []) or "unknown architecture"
    raise UnsupportedModel(
        f"model_type '{model_type}' ({arch}) is not a supported Mixture-of-Experts family; "
        f"supported model types: {', '.join(supported)}")
