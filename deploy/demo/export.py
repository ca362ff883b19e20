"""Writes a trained draft (train.py's checkpoint) as the Hugging Face folder the engine loads.

config.json (train.py's config: LlamaMoEForCausalLM with deploy/make_demo_models.py's keys, or
LlamaForCausalLM), model.safetensors in f16 (tied embeddings: no lm_head; LLaMA-MoE's unused
mlp.gate.weight_noise.weight is written as zeros, as the seed's checkpoints carry it), the
target's tokenizer.json / tokenizer_config.json / generation_config.json (the engine's
vocabulary check compares the pieces id by id), and SHA256SUMS over those files.

    /usr/bin/python3 deploy/demo/export.py build/distill/moe.pt \
        --target build/models/smollm2-135m-instruct --out deploy/demo/smollm2-moe-draft
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_torch  # noqa: E402

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--target", required=True, help="the target's folder (tokenizer files)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    ck = torch.load(args.checkpoint)
    cfg, state = ck["config"], dict(ck["state"])
    if cfg["model_type"] == "llama_moe":
        for i in range(cfg["num_hidden_layers"]):
            state[f"model.layers.{i}.mlp.gate.weight_noise.weight"] = torch.zeros(
                cfg["num_experts"], cfg["hidden_size"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    llama_torch.write_safetensors(os.path.join(args.out, "model.safetensors"), state, "f16")
    for name in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(args.target, name), os.path.join(args.out, name))
    files = ["config.json", "model.safetensors"] + TOKENIZER_FILES
    with open(os.path.join(args.out, "SHA256SUMS"), "w") as f:
        for name in files:
            with open(os.path.join(args.out, name), "rb") as g:
                f.write(f"{hashlib.sha256(g.read()).hexdigest()}  {name}\n")
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(f"export: wrote {args.out} ({size / 1e6:.1f} MB of f16 weights, "
          f"{ck['steps']} training steps)")


if __name__ == "__main__":
    main()
