#!/usr/bin/env python3
"""deploy/gguf_to_hf.py — a llama.cpp GGUF (LLaMA architecture) to a Hugging Face model folder.

Usage: gguf_to_hf.py MODEL.gguf OUT_DIR [--dtype f16|f32]

Writes OUT_DIR/config.json (from the GGUF metadata), model.safetensors (tensors under their
Hugging Face names, dequantized to --dtype; the q/k row permutation that llama.cpp's
convert_hf_to_gguf.py applies for its interleaved RoPE is undone), tokenizer.json (a byte-level
BPE rebuilt from tokenizer.ggml.tokens / merges / token_type and the pre-tokenizer named by
tokenizer.ggml.pre), tokenizer_config.json (bos, eos, chat template) and
generation_config.json (bos, eos ids).

Tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1 (dequantized by the `gguf` package). Anything
else (another architecture, k-quants, a SentencePiece vocabulary, llama.cpp's rope_freqs
tensor, an unknown pre-tokenizer) is refused by name. Needs numpy, gguf and safetensors (the
tools venv of deploy/setup.sh). Tested by tests/gguf_import_test.py.
"""
import argparse
import json
import os
import re
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from gguf.quants import dequantize
from safetensors.numpy import save_file

SUPPORTED_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16,
                   GGMLQuantizationType.BF16, GGMLQuantizationType.Q8_0,
                   GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1}

# GGUF tensor name -> Hugging Face name ({i}: the layer).
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
LAYER_NAMES = {"attn_norm.weight": "input_layernorm.weight",
               "ffn_norm.weight": "post_attention_layernorm.weight",
               "attn_q.weight": "self_attn.q_proj.weight",
               "attn_k.weight": "self_attn.k_proj.weight",
               "attn_v.weight": "self_attn.v_proj.weight",
               "attn_output.weight": "self_attn.o_proj.weight",
               "ffn_gate.weight": "mlp.gate_proj.weight",
               "ffn_up.weight": "mlp.up_proj.weight",
               "ffn_down.weight": "mlp.down_proj.weight"}

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


class ImportError_(Exception):
    """A GGUF this importer cannot convert; the message names what."""


def byte_level(use_regex):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
            "use_regex": use_regex}


# tokenizer.ggml.pre -> (pre_tokenizer of tokenizer.json, ignore_merges), as llama.cpp's
# llama-vocab.cpp splits text for each name.
PRE_TOKENIZERS = {
    "default": (byte_level(True), False),
    "gpt-2": (byte_level(True), False),
    "gpt2": (byte_level(True), False),
    "smollm": ({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level(True)]}, False),
    "llama-bpe": ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated",
         "invert": False}, byte_level(False)]}, True),
}
PRE_TOKENIZERS["llama3"] = PRE_TOKENIZERS["llama-bpe"]


class Gguf:
    """Typed access to a GGUFReader's metadata."""

    def __init__(self, path):
        self.reader = GGUFReader(path)
        self.fields = self.reader.fields

    def get(self, key, default=None):
        field = self.fields.get(key)
        return default if field is None else field.contents()

    def need(self, key):
        value = self.get(key)
        if value is None:
            raise ImportError_(f"metadata '{key}' is missing")
        return value


def unpermute(w, n_head):
    """Undoes convert_hf_to_gguf.py's permute(w, n_head): rows [n_head, 2, half] -> [n_head,
    half, 2] there, so back here."""
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def tensor_array(t):
    """The tensor's values as float32 [rows, cols] (numpy order: GGUF's ne reversed)."""
    qtype = GGMLQuantizationType(t.tensor_type)
    if qtype not in SUPPORTED_TYPES:
        raise ImportError_(f"tensor {t.name}: type {qtype.name} is not supported "
                           f"(F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
    shape = tuple(int(n) for n in reversed(t.shape))
    return np.asarray(dequantize(t.data, qtype), dtype=np.float32).reshape(shape)


def read_config(g):
    arch = g.need("general.architecture")
    if arch != "llama":
        raise ImportError_(f"general.architecture '{arch}' is not supported (only llama)")
    if g.get("llama.rope.scaling.type") not in (None, "none"):
        raise ImportError_(f"llama.rope.scaling.type '{g.get('llama.rope.scaling.type')}' is "
                           "not supported")
    heads = int(g.need("llama.attention.head_count"))
    hidden = int(g.need("llama.embedding_length"))
    tokens = g.need("tokenizer.ggml.tokens")
    head_dim = int(g.get("llama.attention.key_length", g.get("llama.rope.dimension_count",
                                                               hidden // heads)))
    return {
        "heads": heads,
        "kv_heads": int(g.get("llama.attention.head_count_kv", heads)),
        "hidden": hidden,
        "layers": int(g.need("llama.block_count")),
        "ffn": int(g.need("llama.feed_forward_length")),
        "eps": float(g.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "theta": float(g.get("llama.rope.freq_base", 10000.0)),
        "context": int(g.get("llama.context_length", 2048)),
        "vocab": int(g.get("llama.vocab_size", len(tokens))),
        "head_dim": head_dim,
    }


def convert_tensors(g, cfg, dtype):
    out = {}
    for t in g.reader.tensors:
        name = t.name
        if name == "rope_freqs.weight":
            raise ImportError_("tensor rope_freqs.weight (llama.cpp's LLaMA-3.1 rope scaling) "
                               "is not supported")
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
        if m and m.group(2) in LAYER_NAMES:
            hf = f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}"
        elif name in GLOBAL_NAMES:
            hf = GLOBAL_NAMES[name]
        else:
            raise ImportError_(f"tensor {name} has no Hugging Face counterpart here")
        w = tensor_array(t)
        if name.endswith("attn_q.weight"):
            w = unpermute(w, cfg["heads"])
        elif name.endswith("attn_k.weight"):
            w = unpermute(w, cfg["kv_heads"])
        out[hf] = np.ascontiguousarray(w.astype(dtype))
    if "model.embed_tokens.weight" not in out:
        raise ImportError_("tensor token_embd.weight is missing")
    return out


def tokenizer_files(g):
    """(tokenizer.json, tokenizer_config.json, bos id, eos ids) from the GGUF's vocabulary."""
    model = g.need("tokenizer.ggml.model")
    if model != "gpt2":
        raise ImportError_(f"tokenizer.ggml.model '{model}' is not supported (only gpt2, the "
                           "byte-level BPE; for a SentencePiece vocabulary copy the original "
                           "tokenizer.model)")
    pre_name = g.get("tokenizer.ggml.pre", "default")
    if pre_name not in PRE_TOKENIZERS:
        raise ImportError_(f"tokenizer.ggml.pre '{pre_name}' is not supported "
                           f"({', '.join(sorted(PRE_TOKENIZERS))})")
    pre, ignore_merges = PRE_TOKENIZERS[pre_name]
    tokens = g.need("tokenizer.ggml.tokens")
    types = g.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens))
    merges = g.need("tokenizer.ggml.merges")
    added = []
    for i, (tok, typ) in enumerate(zip(tokens, types)):
        if typ in (TokenType.CONTROL, TokenType.USER_DEFINED):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": typ == TokenType.USER_DEFINED,
                          "special": typ == TokenType.CONTROL})
    bos = g.get("tokenizer.ggml.bos_token_id")
    eos = g.get("tokenizer.ggml.eos_token_id")
    eos_ids = [int(eos)] if eos is not None else []
    eot = g.get("tokenizer.ggml.eot_token_id")
    if eot is not None and int(eot) not in eos_ids:
        eos_ids.append(int(eot))
    add_bos = bool(g.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
            "use_regex": True}
    if add_bos:
        bos_token = tokens[int(bos)]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_token, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_token, "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_token: {"id": bos_token, "ids": [int(bos)],
                                               "tokens": [bos_token]}}}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": pre, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                  "vocab": {tok: i for i, tok in enumerate(tokens)},
                  "merges": list(merges)}}
    tok_config = {"add_bos_token": add_bos, "clean_up_tokenization_spaces": False,
                  "model_max_length": int(g.get("llama.context_length", 2048))}
    if bos is not None:
        tok_config["bos_token"] = tokens[int(bos)]
    if eos is not None:
        tok_config["eos_token"] = tokens[int(eos)]
    template = g.get("tokenizer.chat_template")
    if template is not None:
        tok_config["chat_template"] = template
    return tokenizer, tok_config, (int(bos) if bos is not None else None), eos_ids


def convert(gguf_path, out_dir, dtype_name):
    dtype = {"f16": np.float16, "f32": np.float32}[dtype_name]
    g = Gguf(gguf_path)
    cfg = read_config(g)
    tensors = convert_tensors(g, cfg, dtype)
    tokenizer, tok_config, bos, eos_ids = tokenizer_files(g)
    if len(tokenizer["model"]["vocab"]) != cfg["vocab"]:
        raise ImportError_(f"llama.vocab_size {cfg['vocab']} differs from the "
                           f"{len(tokenizer['model']['vocab'])} tokens")
    os.makedirs(out_dir, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg["vocab"], "hidden_size": cfg["hidden"],
        "intermediate_size": cfg["ffn"], "num_hidden_layers": cfg["layers"],
        "num_attention_heads": cfg["heads"], "num_key_value_heads": cfg["kv_heads"],
        "head_dim": cfg["head_dim"], "max_position_embeddings": cfg["context"],
        "rms_norm_eps": cfg["eps"], "rope_theta": cfg["theta"], "rope_scaling": None,
        "tie_word_embeddings": "lm_head.weight" not in tensors, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False,
        "bos_token_id": bos, "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        "torch_dtype": {"f16": "float16", "f32": "float32"}[dtype_name],
    }
    write_json(os.path.join(out_dir, "config.json"), config)
    write_json(os.path.join(out_dir, "generation_config.json"),
               {"bos_token_id": bos, "eos_token_id": eos_ids})
    write_json(os.path.join(out_dir, "tokenizer.json"), tokenizer)
    write_json(os.path.join(out_dir, "tokenizer_config.json"), tok_config)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return config


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("gguf")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    args = parser.parse_args()
    try:
        config = convert(args.gguf, args.out_dir, args.dtype)
    except ImportError_ as e:
        print(f"gguf_to_hf: {args.gguf}: {e}", file=sys.stderr)
        return 1
    print(f"gguf_to_hf: wrote {args.out_dir} ({config['num_hidden_layers']} layers, hidden "
          f"{config['hidden_size']}, vocab {config['vocab_size']}, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
