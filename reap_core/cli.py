"""`python -m reap_core <command>`: the same functions the app calls, for scripts and servers.

Every user mistake prints one line starting with 'error:' and exits with status 2. Everything a
command can check without the model (output paths, ratios, criteria, the statistics file and its
claims against the config) is checked before the model is loaded, so a mistake costs a second,
never the hour of calibration or evaluation before it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from .cli_checks import (check_output_dir, check_output_file, check_stats_fit_config, parse_ratios, positive_float,
                         positive_int)
from .errors import OutputError, ReapError

# Where outputs go when --out is not given: git-ignored folders of the working directory, so the
# README's examples never leave untracked files at the top of a checkout.
OUTPUTS = Path("outputs")
EXPORTS = Path("exports")


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for n, r in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def cmd_info(args) -> None:
    from .adapters import find_adapter
    from .model import load_config
    from .sizing import checkpoint_format, count_params, size_at

    config = load_config(args.model, trust_remote_code=args.trust_remote_code)
    adapter = find_adapter(config)
    counts = count_params(config, adapter)
    size = size_at(counts, counts.num_experts, checkpoint_format(config))
    text = adapter.text_config(config)
    rows = [("model", args.model),
            ("family", f"{adapter.layout.family} ({', '.join(config.architectures or ['?'])})"),
            ("layers", f"{adapter.num_layers(config)} ({counts.moe_layers} with MoE)"),
            ("experts / layer",
             f"{counts.num_experts}, top-{counts.top_k} per token, width {adapter.expert_width(config)}"),
            ("hidden size", str(text.hidden_size)),
            ("gate", adapter.layout.gate_definition)]
    if adapter.layout.shared_experts:
        rows.append(("shared experts", f"always on, never pruned ({', '.join(adapter.layout.shared_experts)})"))
    if adapter.expert_groups(config) > 1:
        rows.append(("expert groups", f"{adapter.expert_groups(config)} (a prune removes the same number from each)"))
    said = ("experts per layer", "experts per token")          # in the 'experts / layer' line already
    rows += [(k.lower(), str(v)) for k, v in size.as_row().items() if k.lower() not in said]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def cmd_models(args) -> None:
    """The models the app's picker suggests: the bundled one, then every family's flagships, with the
    sizes `info` gives (measured from their configs by scripts/flagship_sizes.py) where we have them."""
    from .adapters import find_adapter
    from .model import BUNDLED_MODEL, load_config
    from .sizing import count_params, human_count, size_at
    from .studio import flagships, hardware_for

    config = load_config(BUNDLED_MODEL)             # local and tiny: measured here
    adapter = find_adapter(config)
    counts = count_params(config, adapter)
    toy = size_at(counts, counts.num_experts)
    rows = [("model", "family", "total params", "active params", "needs"),
            (BUNDLED_MODEL, adapter.layout.family, human_count(toy.total_params), human_count(toy.active_params),
             "nothing: bundled, runs on a CPU offline")]
    for f in flagships():
        sized = f.total_params is not None
        rows.append((f.hub_id, f.family, human_count(f.total_params) if sized else "?",
                     human_count(f.active_params) if sized else "?",
                     f"{hardware_for(f.total_params)} and the Hub" if sized
                     else f"the Hub (sizes: info --model {f.hub_id})"))
    _print_table(rows)


def cmd_plan(args) -> None:
    from .adapters import find_adapter
    from .model import load_config
    from .sizing import checkpoint_format, count_params, sizes_for_ratio

    config = load_config(args.model, trust_remote_code=args.trust_remote_code)
    counts = count_params(config, find_adapter(config))
    original, pruned = sizes_for_ratio(counts, args.ratio, checkpoint_format(config))
    rows = [("", "Original", f"Pruned ({args.ratio:g})")]
    for (k, a), b in zip(original.as_row().items(), pruned.as_row().values()):
        rows.append((k, a, b))
    _print_table(rows)


def cmd_calibrate(args) -> None:
    from . import distributed
    from .calibration import build_calibration
    from .model import load_model
    from .observer import observe
    from .progress import TerminalProgress
    from .stats import stats_path

    shard = distributed.parse_shard(args.shard) if args.shard else None
    device = "auto"
    if distributed.launched_by_torchrun():   # torchrun / accelerate launch: one rank of a process group
        if shard:
            raise ReapError("--shard splits the samples across separate runs; under torchrun the ranks split them "
                           "already: use one or the other")
        device = str(distributed.init_from_environment())
    rank, world_size = distributed.world()
    if args.out is None:
        suffix = f"-shard{shard[0] + 1}of{shard[1]}" if shard else ""
        args.out = str(OUTPUTS / f"{Path(args.model.rstrip('/')).name}-stats{suffix}.npz")
    check_output_file(str(stats_path(args.out)), "--out")   # '.npz' is appended as save() does
    sequential = args.sequential or (not shard and world_size == 1 and _too_big(args, device))
    offload = None
    if sequential:
        from .sequential import load_offloaded
        loaded, offload = load_offloaded(args.model, dtype=args.dtype, device=device, offload_folder=args.offload_dir,
                                         trust_remote_code=args.trust_remote_code)
    else:
        loaded = load_model(args.model, dtype=args.dtype, device=device, trust_remote_code=args.trust_remote_code)
    try:
        calib = build_calibration(args.calibration, loaded.tokenizer, max_tokens=args.max_tokens,
                                  samples_per_category=args.samples_per_category, processor=loaded.processor)
        part = (f"shard {shard[0] + 1} of {shard[1]}: " if shard else
                f"rank {rank} of {world_size}: " if world_size > 1 else "")
        pictures = f"{calib.num_images} images, " if calib.num_images else ""
        print(f"{part}calibration: {len(calib.token_ids)} samples, {pictures}{calib.num_tokens} tokens, "
              f"{len(calib.categories)} categories ({calib.truncated} truncated to {args.max_tokens} tokens)")
        start = time.perf_counter()
        if sequential:
            from .sequential import observe_sequential
            bar = TerminalProgress("calibration, layer by layer", "layer-batches")
            resume = Path(args.resume_dir or str(stats_path(args.out)) + ".partial")
            try:
                stats = observe_sequential(loaded, calib, batch_size=args.batch_size, checkpoint_dir=resume,
                                           checkpoint_every_s=args.checkpoint_minutes * 60,
                                           progress=lambda layer, layers, batch, batches: bar.update(
                                               layer * batches + batch, layers * batches,
                                               f"layer {layer + 1} of {layers}, batch {batch} of {batches}"))
            except BaseException:
                if (resume / "sequential-state.pt").is_file():
                    print(f"\nthe finished layers are saved in {resume}: the same command resumes after them",
                          file=sys.stderr)
                raise
            finally:
                bar.close()
            if stats.calibration["sequential"]["resumed_after_layers"]:
                print(f"resumed after layer {stats.calibration['sequential']['resumed_after_layers']} from {resume}")
            shutil.rmtree(resume, ignore_errors=True)
        else:
            bar = TerminalProgress("calibration" + (f" (rank {rank})" if world_size > 1 else ""), "samples")
            try:
                stats = observe(loaded, calib, batch_size=args.batch_size, shard=shard,
                                progress=lambda done, total, tokens: bar.update(done, total, f"{tokens:,} tokens"))
            finally:
                bar.close()
    finally:
        if offload is not None:
            shutil.rmtree(offload, ignore_errors=True)
    seconds = time.perf_counter() - start
    observed = sum(stats.tokens_per_category)
    if rank == 0:
        path = stats.save(args.out)
        note = (f"; shard {shard[0] + 1} of {shard[1]}: combine all with 'merge-stats'" if shard else
                f"; {world_size} ranks reduced into one file" if world_size > 1 else "")
        print(f"observed {observed} tokens in {seconds:.1f} s ({observed / seconds:.0f} tokens/s); "
              f"statistics written to {path}{note}")


def _too_big(args, device: str) -> bool:
    """True (with a notice) when the model's weights would not fit the device: calibrate layer by layer."""
    from .sequential import weights_fit

    fits, notice = weights_fit(args.model, args.dtype, device, args.trust_remote_code)
    if not fits:
        print(f"notice: {notice}: calibrating layer by layer (--sequential), one decoder layer on the device at a "
              f"time; the statistics are the same")
    return not fits


def cmd_merge_stats(args) -> None:
    from .distributed import merge_stats
    from .stats import ExpertStats, stats_path

    check_output_file(str(stats_path(args.out)), "--out")
    parts = [ExpertStats.load(f) for f in args.files]
    merged = merge_stats(parts)
    path = merged.save(args.out)
    print(f"merged {len(parts)} shards ({sum(merged.tokens_per_category):,} tokens) into {path}")


def cmd_prune(args) -> None:
    from .export import new_output_dir
    from .model import load_model
    from .plan import make_plan
    from .prune import save_pruned
    from .stats import ExpertStats

    stats = ExpertStats.load(args.stats)
    plan = make_plan(stats, args.ratio, args.criterion, protect_super_experts=args.protect_super_experts,
                     seed=args.seed)  # validate before loading gigabytes
    if args.out is None:
        args.out = str(new_output_dir(OUTPUTS, args.model, plan.criterion, plan.compression_ratio))
    check_output_dir(args.out, "--out")
    check_stats_fit_config(stats, args.model, args.trust_remote_code)
    loaded = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    stats.check_matches(loaded.moe_layer_indices, loaded.num_experts, loaded.top_k)
    out = save_pruned(loaded, plan, stats, args.out, in_place=True)
    print(f"pruned {plan.num_pruned} of {plan.num_experts} experts per layer with '{plan.criterion}' "
          f"({plan.num_kept} kept); saved to {out}")


def cmd_eval(args) -> None:
    """Task accuracy of the original or a masked prune; with --fidelity a sweep over ratios and
    criteria, with --generation the generation-quality table (both need --stats)."""
    import json

    from .eval_defaults import defaults_for
    from .fidelity import METRICS, feasible_ratios, run_fidelity_sweep
    from .generation_quality import generation_quality
    from .heldout import build_heldout, calibration_exclusion
    from .model import load_model
    from .plan import make_plan
    from .saliency import get_criterion
    from .stats import ExpertStats
    from .task_eval import get_suite, suite_accuracy, task_accuracy

    if args.json:
        check_output_file(args.json, "--json")    # before the evaluation, not after it
    if args.suite != "auto":
        try:
            get_suite(args.suite)  # unknown suite: error before loading the model
        except ValueError as exc:
            raise ReapError(str(exc)) from None
    stats = ExpertStats.load(args.stats) if args.stats else None
    if (args.fidelity or args.generation) and stats is None:
        raise ReapError("--fidelity and --generation need --stats (the calibration statistics to prune with)")
    if args.generation and args.ratio is None:
        raise ReapError("--generation compares the original with a prune: give --ratio")
    plan = None
    if args.ratio is not None:
        if stats is None:
            raise ReapError("--ratio needs --stats (the calibration statistics to prune with)")
        plan = make_plan(stats, args.ratio, args.criterion, seed=args.seed)
    merges = parse_merge_methods(args.sweep_merges) if args.fidelity and args.sweep_merges else []
    if args.merge:
        parse_merge_methods(args.merge)
        if plan is None:
            raise ReapError("--merge evaluates the model merged at --ratio: give --stats and --ratio")
    sweep_ratios = sweep_criteria = None
    if args.fidelity:
        sweep_criteria = [c.strip() for c in args.sweep_criteria.split(",")]
        for name in sweep_criteria:
            get_criterion(name)
        sweep_ratios = feasible_ratios(stats.num_experts, stats.top_k)
        if args.sweep_ratios:
            sweep_ratios = parse_ratios(args.sweep_ratios)
            usable = feasible_ratios(stats.num_experts, stats.top_k, sweep_ratios)
            too_far = [r for r in sweep_ratios if r not in usable]
            if too_far:
                most = (stats.num_experts - stats.top_k) / stats.num_experts
                raise ReapError(f"--sweep-ratios: {too_far[0]:g} keeps fewer than the {stats.top_k} experts the "
                                f"router picks; usable up to {most:.3f}")
    if stats is not None:
        check_stats_fit_config(stats, args.model, args.trust_remote_code)
    loaded = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    if stats is not None:
        stats.check_matches(loaded.moe_layer_indices, loaded.num_experts, loaded.top_k)
    suite = defaults_for(loaded)["suite"] if args.suite == "auto" else args.suite
    report: dict = {}
    signals = None
    if args.merge or merges:
        signals = _collect_signals(loaded, stats, args.batch_size)
    if args.merge:
        plan = _build_merge(loaded, stats, signals, args.merge, args.ratio, align=args.align)
    label = f"pruned {plan.num_pruned}/{plan.num_experts} experts per layer by {plan.criterion}" if plan else "original"
    print(f"{suite} suite, {args.items_per_domain} items per domain, {label}"
          + (", thinking on" if args.thinking else ""))
    if plan is not None:
        tasks = task_accuracy(loaded, plan, suite, items_per_domain=args.items_per_domain, thinking=args.thinking)
        print(tasks.format_table())
        report["tasks"] = tasks.to_dict()
    else:  # the same call task_accuracy makes for its "original" column: the same score
        result = suite_accuracy(loaded, None, suite, items_per_domain=args.items_per_domain, thinking=args.thinking)
        print(result.format_table())
        report["tasks"] = result.to_dict()
    if args.generation:
        gen = generation_quality(loaded, plan)
        print("\n" + gen.format_table())
        report["generation"] = gen.to_dict()
    if args.fidelity:
        heldout = build_heldout(defaults_for(loaded)["heldout"], loaded.tokenizer,
                                calibration_exclusion(stats, loaded.tokenizer))
        result = run_fidelity_sweep(loaded, stats, heldout, sweep_ratios, sweep_criteria, merges=merges,
                                    signals=signals)
        for metric in METRICS:
            print("\n" + result.format_table(metric))
        report["fidelity"] = result.to_dict()
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1, default=str)
        except OSError as exc:  # checked writable at the start; this is a full disk or a race
            raise OutputError(f"--json '{args.json}' could not be written ({exc.strerror or exc}); "
                              f"the results are printed above") from None
        print(f"results written to {args.json}")


def parse_merge_methods(text: str) -> list[str]:
    from .merge_plan import MERGE_METHODS
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in MERGE_METHODS]
    if unknown or not methods:
        raise ReapError(f"unknown merge method '{(unknown or [text])[0]}'; choose from {', '.join(MERGE_METHODS)}")
    return methods


def _collect_signals(loaded, stats, batch_size: int):
    """The merge signals of the statistics' calibration (one more pass of it), with a progress bar."""
    from .merge_signals import collect_for_stats
    from .progress import TerminalProgress

    bar = TerminalProgress("merge signals (one pass of the calibration data)", "samples")
    try:
        signals = collect_for_stats(loaded, stats, batch_size=batch_size,
                                    progress=lambda done, total, tokens: bar.update(done, total, f"{tokens:,} tokens"))
    finally:
        bar.close()
    print(f"merge signals: {signals.tokens:,} tokens in {signals.seconds:.1f} s")
    return signals


def _build_merge(loaded, stats, signals, method: str, ratio: float, align: bool | None = None):
    from .merge_plan import plan_merge
    from .merging import build_merged
    from .sizing import human_bytes

    merged = build_merged(loaded, plan_merge(stats, signals, method, ratio, align=align))
    print(f"{method}: {merged.num_experts} experts merged into {merged.num_kept} per layer (clusters of "
          f"1–{merged.plan.largest_cluster}"
          f"{', neurons aligned' if merged.plan.align else ''}) in {merged.seconds:.1f} s; merged experts in memory: "
          f"{human_bytes(merged.nbytes)}")
    return merged


def cmd_merge(args) -> None:
    from .export import describe_verification, export_merged, new_output_dir
    from .model import load_model
    from .sizing import human_bytes
    from .stats import ExpertStats

    method = parse_merge_methods(args.method)[0]
    stats = ExpertStats.load(args.stats)
    from .plan import check_ratio
    check_ratio(args.ratio, stats.num_experts, stats.top_k, stats.expert_groups)   # before loading gigabytes
    if args.out is None:
        args.out = str(new_output_dir(EXPORTS, args.model, method, args.ratio))
    check_output_dir(args.out, "--out")
    check_stats_fit_config(stats, args.model, args.trust_remote_code)
    print(f"loading {args.model} (merged experts are computed from the weights in memory)")
    loaded = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    stats.check_matches(loaded.moe_layer_indices, loaded.num_experts, loaded.top_k)
    signals = _collect_signals(loaded, stats, args.batch_size)
    merged = _build_merge(loaded, stats, signals, method, args.ratio, align=args.align)
    progress = _progress_bar("export")
    try:
        result = export_merged(loaded, merged, stats, args.out, verify=args.verify, repo_id=args.repo,
                               max_shard_bytes=int(args.max_shard_gb * 1e9), progress=progress)
    finally:
        progress.close()
    check = (describe_verification(result.verification) if result.max_abs_diff is not None
             else "not verified (--no-verify)")
    print(f"merged export: {check}")
    print(f"wrote {len(result.files)} files, {human_bytes(result.bytes)}, in {result.seconds:.1f} s to {result.path}")


def _progress_bar(desc: str):
    """A progress(fraction, message) callback on stderr (reap_core.progress: redrawn on a terminal,
    a few lines when piped); call .close() at the end."""
    from .progress import TerminalProgress

    bar = TerminalProgress(desc, "%")

    def progress(fraction: float, message: str) -> None:
        bar.fraction(fraction, message[:70])

    progress.close = bar.close
    return progress


def cmd_export(args) -> None:
    from .export import describe_verification, export_pruned, has_safetensors, new_output_dir, source_folder
    from .model import load_model
    from .plan import make_plan
    from .sizing import human_bytes
    from .stats import ExpertStats

    stats = ExpertStats.load(args.stats)
    plan = make_plan(stats, args.ratio, args.criterion, protect_super_experts=args.protect_super_experts,
                     seed=args.seed)  # validate before reading gigabytes
    if args.out is None:
        args.out = str(new_output_dir(EXPORTS, args.model, plan.criterion, plan.compression_ratio))
    check_output_dir(args.out, "--out")
    check_stats_fit_config(stats, args.model, args.trust_remote_code)
    streaming = args.streaming
    if streaming is None:
        streaming = has_safetensors(source_folder(args.model, download=False)) or None
    loaded = None
    verify = "layerwise" if args.verify_layerwise else args.verify
    if streaming is False or verify is True:
        print(f"loading {args.model} ({'to slice in memory' if streaming is False else 'to verify the export'})")
        loaded = load_model(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
        stats.check_matches(loaded.moe_layer_indices, loaded.num_experts, loaded.top_k)
    progress = _progress_bar("export")
    try:
        result = export_pruned(loaded if streaming is False else args.model, plan, stats, args.out, loaded=loaded,
                               streaming=streaming, verify=verify, repo_id=args.repo,
                               max_shard_bytes=int(args.max_shard_gb * 1e9), progress=progress)
    finally:
        progress.close()
    check = (describe_verification(result.verification) if result.max_abs_diff is not None
             else "not verified (--no-verify)")
    print(f"pruned {plan.num_pruned} of {plan.num_experts} experts per layer with '{plan.criterion}' "
          f"({plan.num_kept} kept), {'streaming' if result.streaming else 'in memory'}; {check}")
    print(f"wrote {len(result.files)} files, {human_bytes(result.bytes)}, in {result.seconds:.1f} s to {result.path}")


def cmd_push(args) -> None:
    from .hub import push_folder

    progress = _progress_bar("push")
    try:
        url = push_folder(args.folder, args.repo, token=None, private=args.private, progress=progress)
    finally:
        progress.close()
    print(f"pushed {args.folder} to {url}")


def build_parser() -> argparse.ArgumentParser:
    from .model import BUNDLED_MODEL
    from .saliency import criterion_names

    parser = argparse.ArgumentParser(prog="python -m reap_core",
                                     description="REAP expert pruning for Mixture-of-Experts LLMs (Gemma 4, Qwen3-MoE, GLM-4.5, "
                                                 "DeepSeek-V3 and more: see 'models').")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(fn=fn)
        p.add_argument("--model", default=BUNDLED_MODEL,
                       help=f"Hub id or local folder (default: the bundled '{BUNDLED_MODEL}')")
        p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model (off by default)")
        return p

    p = sub.add_parser("models", help="models to try: the bundled one and every family's flagships, with sizes",
                       description="models to try: the bundled one and every family's flagships, with the sizes "
                                   "'info' gives (measured once from their configs)")
    p.set_defaults(fn=cmd_models)
    add("info", cmd_info, "layers, experts and sizes, from the config alone")
    p = add("plan", cmd_plan, "original vs pruned sizes for a ratio, from the config alone")
    p.add_argument("--ratio", type=float, required=True, help="fraction of experts to remove per layer, 0 < R < 1")

    p = add("calibrate", cmd_calibrate, "run calibration data through the model and save expert statistics")
    p.add_argument("--calibration", default="builtin",
                   help="builtin | builtin:cat1,cat2 | file.jsonl | file.txt | name[subset](split):N")
    p.add_argument("--out", help="statistics file to write (.npz; default outputs/<model>-stats.npz)")
    p.add_argument("--max-tokens", type=positive_int, default=512,
                   help="tokens per sample (longer samples are truncated)")
    p.add_argument("--samples-per-category", type=positive_int, default=None,
                   help="at most this many samples per category")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, float32 on CPU), float32, bfloat16, float16")
    p.add_argument("--shard", help="i/n: observe only shard i of n of the samples (separate jobs; combine the n "
                                   "files with merge-stats). Under torchrun the ranks split the samples themselves")
    p.add_argument("--sequential", action="store_true",
                   help="one decoder layer at a time on the device, the rest of the model on disk (for models larger "
                        "than the device; chosen automatically, with a notice, when the weights do not fit)")
    p.add_argument("--offload-dir", help="where --sequential keeps the layers transformers converts at load "
                                         "(default: the system's temporary folder; removed afterwards)")
    p.add_argument("--resume-dir", help="where --sequential saves finished layers, to resume an interrupted run "
                                        "(default: <out>.partial; removed once the statistics are written)")
    p.add_argument("--checkpoint-minutes", type=positive_float, default=10.0,
                   help="save finished layers for resuming at most this often (default 10)")
    p = sub.add_parser("merge-stats", help="combine the statistics files of calibrate --shard 1/n … n/n into one",
                       description="combine the statistics files of calibrate --shard 1/n … n/n into one; files of "
                                   "other models, layers or calibration settings are refused")
    p.set_defaults(fn=cmd_merge_stats)
    p.add_argument("files", nargs="+", help="the n shard files (.npz)")
    p.add_argument("--out", required=True, help="statistics file to write (.npz)")

    def add_plan_arguments(p: argparse.ArgumentParser) -> None:
        """What a PruningPlan is made of: the same flags for prune and export."""
        p.add_argument("--stats", required=True, help="statistics file from 'calibrate'")
        p.add_argument("--ratio", type=float, required=True, help="fraction of experts to remove per layer, 0 < R < 1")
        p.add_argument("--criterion", default="reap", choices=criterion_names())
        p.add_argument("--protect-super-experts", action="store_true",
                       help="never prune experts with outlier activations")
        p.add_argument("--seed", type=int, default=0, help="seed for the 'random' criterion")

    p = add("prune", cmd_prune, "prune with saved statistics and write a loadable model folder")
    add_plan_arguments(p)
    p.add_argument("--out", help="output folder (default outputs/<model>-<criterion>-<percent>, a new name if taken)")
    p.add_argument("--dtype", default="auto")
    p = add("eval", cmd_eval, "task accuracy per domain, of the original or a masked prune")
    p.add_argument("--suite", default="auto",
                   help="task suite: auto (toy for the bundled model, gemma4-bench otherwise), toy, gemma4-bench")
    p.add_argument("--items-per-domain", type=positive_int, default=40)
    p.add_argument("--thinking", action="store_true", help="answer with thinking on (the chat template's switch)")
    p.add_argument("--stats", help="statistics file: evaluate the model pruned with these statistics")
    p.add_argument("--ratio", type=float, help="compression ratio to evaluate (with --stats)")
    p.add_argument("--fidelity", action="store_true", help="sweep ratios x criteria: KL, top-1 agreement, PPL ratio")
    p.add_argument("--sweep-ratios", help="comma-separated ratios (default 0 to 0.8 by 0.1, as far as top-k allows)")
    p.add_argument("--sweep-criteria", default="reap,frequency,ean_sum,random")
    p.add_argument("--sweep-merges", help="with --fidelity: merge methods swept beside the criteria, e.g. "
                                          "hc-smoe,m-smoe,ream (one more pass of the calibration data)")
    p.add_argument("--merge", help="with --stats and --ratio: evaluate the model merged by this method "
                                   "(hc-smoe, m-smoe, ream) instead of pruned")
    p.add_argument("--no-align", dest="align", action="store_const", const=False, default=None,
                   help="with --merge: average experts without aligning their neurons first")
    p.add_argument("--batch-size", type=positive_int, default=4, help="batch size of the merge-signals pass")
    p.add_argument("--generation", action="store_true", help="generation quality: length, loop and collapse rates")
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--criterion", default="reap", choices=criterion_names())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto")
    p = add("export", cmd_export, "prune with saved statistics and write a complete, verified folder to publish")
    add_plan_arguments(p)
    p.add_argument("--out", help="output folder (default exports/<model>-<criterion>-<percent>, a new name if "
                                 "taken; an earlier export named here is replaced only once the new one is complete)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--streaming", dest="streaming", action="store_const", const=True, default=None,
                      help="slice the source safetensors files shard by shard, ~constant memory "
                           "(default when the model is a local folder or Hub snapshot with safetensors)")
    mode.add_argument("--in-memory", dest="streaming", action="store_const", const=False,
                      help="load the model and slice it in memory (small models)")
    p.add_argument("--verify-layerwise", action="store_true",
                   help="verify layer by layer against the source on disk (about two decoder layers of memory "
                        "instead of a second copy of the model; streaming exports)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip reloading the export and comparing logits (verification loads the model: "
                        "as much memory as the model itself)")
    p.add_argument("--repo", help="Hub repo id the card's usage examples name (default: the folder name)")
    p.add_argument("--max-shard-gb", type=positive_float, default=5.0, help="largest weight shard to write, in GB")
    p.add_argument("--dtype", default="auto", help="dtype to load the model in (verification / --in-memory)")

    p = add("merge", cmd_merge, "merge experts (HC-SMoE, M-SMoE, REAM) with saved statistics and write a complete, "
                                "verified folder, as export does for a prune")
    p.add_argument("--stats", required=True, help="statistics file from 'calibrate' (its calibration data is read "
                                                  "again for the merge signals)")
    p.add_argument("--method", required=True, help="hc-smoe | m-smoe | ream")
    p.add_argument("--ratio", type=float, required=True, help="fraction of experts merged away per layer, 0 < R < 1")
    p.add_argument("--no-align", dest="align", action="store_const", const=False, default=None,
                   help="average experts without aligning their neurons first (default: aligned for m-smoe and "
                        "ream, as those methods do; hc-smoe averages as it is)")
    p.add_argument("--out", help="output folder (default exports/<model>-<method>-<percent>, a new name if taken)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip reloading the export and comparing it with the merged model in memory")
    p.add_argument("--repo", help="Hub repo id the card's usage examples name (default: the folder name)")
    p.add_argument("--max-shard-gb", type=positive_float, default=5.0, help="largest weight shard to write, in GB")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--dtype", default="auto")

    p = sub.add_parser("push", help="upload an exported folder to the Hugging Face Hub",
                       description="upload an exported folder to the Hugging Face Hub, with the token saved by "
                                   "`hf auth login` (or HF_TOKEN)")
    p.set_defaults(fn=cmd_push)
    p.add_argument("--folder", required=True, help="folder written by 'export'")
    p.add_argument("--repo", required=True, help="user/name (or just name: your account is used)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not sys.stderr.isatty():   # piped or logged: no download / weight-loading bars (one line per redraw)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")   # read by both libraries at import
        if "transformers" in sys.modules:                            # imported already (main() in-process)
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    try:
        args.fn(args)
    except ReapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
