#!/usr/bin/env python3
"""tests/gguf_import_test.py — deploy/gguf_to_hf.py against the GGUF's own tensors.

Writes two tiny LLaMA GGUFs with the `gguf` package's writer, the way llama.cpp's converter
lays them out (q/k rows permuted for interleaved RoPE; tensors in F32, F16, BF16, Q8_0, Q4_0
and Q4_1; a byte-level BPE vocabulary trained with `tokenizers`, one with SmolLM's and tied
embeddings, one with LLaMA-3's pre-tokenizer, a BOS template and an untied head). Each is
imported to f32 and to f16; the engine's logits of the imported folder (tests/model_logits.cc,
argv[1]) must equal, within 1e-4 of the largest logit per position, a float64 forward of the
GGUF's own dequantized tensors in llama.cpp's layout (interleaved RoPE on the permuted rows),
with the weights rounded to f16 for the f16 import. The rebuilt tokenizer.json must encode a
generated corpus exactly as the original tokenizer does (HF `tokenizers` on both), and the
engine's tokenizer on the imported folder must agree with them. Also: unsupported inputs are
refused by name.

Run by ctest with the tools venv's Python (numpy, gguf, safetensors, tokenizers).
"""
import json
import math
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter, TokenType
from gguf.quants import dequantize, quantize
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bpe_exact_test import SPECIALS, random_string, variants  # noqa: E402

IMPORTER = os.path.join(os.path.dirname(HERE), "deploy", "gguf_to_hf.py")
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, THETA, EPS = 64, 2, 4, 2, 128, 100000.0, 1e-5
HEAD_DIM = HIDDEN // HEADS
# Each weight's GGUF type, rotating per layer so that every type meets every role.
TYPES = [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.F16, Q.BF16, Q.F32]
ROLES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def train_tokenizer(rng, pre):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([random_string(rng) for _ in range(3000)], trainer=trainer)
    tok.add_tokens([AddedToken("<sep>", normalized=True)])
    return tok


def permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py's permute for q/k rows (HF half-split -> interleaved)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(path, tok, rng, pre_name, tied, add_bos):
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    added = {a["id"]: a for a in spec["added_tokens"]}
    size = max(list(vocab.values()) + list(added)) + 1
    tokens, types = [""] * size, [TokenType.NORMAL] * size
    for t, i in vocab.items():
        tokens[i] = t
    for i, a in added.items():
        tokens[i] = a["content"]
        types[i] = TokenType.CONTROL if a["special"] else TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]

    w = GGUFWriter(path, "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(THETA)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_name)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(SPECIALS.index("<|begin_of_text|>"))
    w.add_eos_token_id(SPECIALS.index("<|im_end|>"))
    w.add_add_bos_token(add_bos)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def add(name, arr, qtype):
        arr = arr.astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, arr)
        elif qtype == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, quantize(arr, qtype), raw_dtype=qtype)

    def normal(shape, std):
        return rng.standard_normal(shape) * std

    add("token_embd.weight", normal((size, HIDDEN), 1.0), Q.Q8_0)
    add("output_norm.weight", 1 + normal((HIDDEN,), 0.1), Q.F32)
    if not tied:
        add("output.weight", normal((size, HIDDEN), 0.6), Q.Q4_1)
    for i in range(LAYERS):
        shapes = {"attn_q": (HEADS * HEAD_DIM, HIDDEN), "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
                  "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN), "attn_output": (HIDDEN, HIDDEN),
                  "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}
        for r, role in enumerate(ROLES):
            arr = normal(shapes[role], 2 * shapes[role][1] ** -0.5)  # HF layout
            if role == "attn_q":
                arr = permute(arr, HEADS)
            elif role == "attn_k":
                arr = permute(arr, KV_HEADS)
            add(f"blk.{i}.{role}.weight", arr, TYPES[(r + i) % len(TYPES)])
        add(f"blk.{i}.attn_norm.weight", 1 + normal((HIDDEN,), 0.1), Q.F32)
        add(f"blk.{i}.ffn_norm.weight", 1 + normal((HIDDEN,), 0.1), Q.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return size


def gguf_tensors(path):
    """The GGUF's tensors dequantized, float64, numpy order [rows, cols]."""
    out = {}
    for t in GGUFReader(path).tensors:
        shape = tuple(int(n) for n in reversed(t.shape))
        out[t.name] = np.asarray(dequantize(t.data, Q(t.tensor_type)),
                                 dtype=np.float64).reshape(shape)
    return out


def reference_logits(w, ids):
    """float64 forward in llama.cpp's layout: RoPE on adjacent pairs (2j, 2j+1) of the
    permuted q/k rows, angle pos * theta^(-2j / head_dim)."""
    t = len(ids)
    x = w["token_embd.weight"][ids]
    inv_freq = THETA ** (-np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM)
    angle = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]

    def rope(v):
        even, odd = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def norm(v, g):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + EPS) * g

    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(LAYERS):
        p = f"blk.{i}."
        h = norm(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(t, HEADS, HEAD_DIM))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(t, KV_HEADS, HEAD_DIM))
        v = (h @ w[p + "attn_v.weight"].T).reshape(t, KV_HEADS, HEAD_DIM)
        outs = []
        for hd in range(HEADS):
            kv = hd // (HEADS // KV_HEADS)
            s = q[:, hd] @ k[:, kv].T / math.sqrt(HEAD_DIM) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            outs.append(s / s.sum(axis=-1, keepdims=True) @ v[:, kv])
        x = x + np.concatenate(outs, axis=-1) @ w[p + "attn_output.weight"].T
        h = norm(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    head = w.get("output.weight", w["token_embd.weight"])
    return norm(x, w["output_norm.weight"]) @ head.T


def run_importer(gguf, out, dtype):
    return subprocess.run([sys.executable, IMPORTER, gguf, out, "--dtype", dtype],
                          capture_output=True, text=True, check=False)


def check_model(tool, tmp, name, gguf, size, rng, original):
    failures = []
    w = gguf_tensors(gguf)
    ids = [rng.randrange(size) for _ in range(24)]
    text = "Hello <sep> world 12345, naïve café 🙂<|im_end|>"
    for dtype in ("f32", "f16"):
        out = os.path.join(tmp, f"{name}_{dtype}")
        result = run_importer(gguf, out, dtype)
        if result.returncode != 0:
            return [f"{name} {dtype}: importer failed: {result.stderr}"]
        ref_w = w if dtype == "f32" else {k: v.astype(np.float16).astype(np.float64)
                                          for k, v in w.items()}
        want = reference_logits(ref_w, ids)
        logits_path = os.path.join(tmp, f"{name}_{dtype}.f32")
        run = subprocess.run([tool, out, ",".join(map(str, ids)), logits_path, text],
                             capture_output=True, text=True, check=False)
        if run.returncode != 0:
            return [f"{name} {dtype}: model_logits failed: {run.stderr}"]
        got = np.fromfile(logits_path, dtype="<f4").reshape(len(ids), size)
        for pos in range(len(ids)):
            err = np.abs(got[pos] - want[pos]).max()
            scale = np.abs(want[pos]).max()
            if err > 1e-4 * scale:
                failures.append(f"{name} {dtype}: position {pos}: max|engine - ref| {err:.3g} "
                                f"vs max|ref| {scale:.3g}")
        print(f"{name} {dtype}: max relative error "
              f"{max(np.abs(got[p] - want[p]).max() / np.abs(want[p]).max() for p in range(len(ids))):.2e}")
        engine_ids = json.loads(run.stdout)
        if engine_ids != original.encode(text, add_special_tokens=False).ids:
            failures.append(f"{name}: engine tokenizer {engine_ids} != "
                            f"{original.encode(text, add_special_tokens=False).ids}")
    rebuilt = Tokenizer.from_file(os.path.join(tmp, f"{name}_f32", "tokenizer.json"))
    corpus = [random_string(rng) for _ in range(2000)]
    for s, a, b in zip(corpus, original.encode_batch(corpus, add_special_tokens=False),
                       rebuilt.encode_batch(corpus, add_special_tokens=False)):
        if a.ids != b.ids:
            failures.append(f"{name}: rebuilt tokenizer differs on {s!r}: {b.ids} vs {a.ids}")
            break
    for s in corpus[:200]:
        if (original.encode(s, add_special_tokens=True).ids !=
                rebuilt.encode(s, add_special_tokens=True).ids):
            failures.append(f"{name}: BOS handling differs on {s!r}")
            break
    return failures


def check_refusals(tmp, tok, rng):
    failures = []
    bad = os.path.join(tmp, "bad_pre.gguf")
    write_gguf(bad, tok, rng, "qwen2", tied=True, add_bos=False)
    result = run_importer(bad, os.path.join(tmp, "bad_pre"), "f16")
    if result.returncode == 0 or "tokenizer.ggml.pre 'qwen2' is not supported" not in result.stderr:
        failures.append(f"an unknown pre-tokenizer was not refused by name: {result.stderr}")
    return failures


def main():
    tool = sys.argv[1]
    rng = random.Random(7)
    nrng = np.random.default_rng(7)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        smollm_pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                              pre_tokenizers.ByteLevel(add_prefix_space=False)])
        smol = train_tokenizer(rng, smollm_pre)
        gguf = os.path.join(tmp, "smollm.gguf")
        size = write_gguf(gguf, smol, nrng, "smollm", tied=True, add_bos=False)
        failures += check_model(tool, tmp, "smollm", gguf, size, rng, smol)

        base = train_tokenizer(rng, pre_tokenizers.ByteLevel(add_prefix_space=False))
        # LLaMA-3's pre-tokenizer, ignore_merges and BOS template (bpe_exact_test's variant).
        llama3 = Tokenizer.from_str(json.dumps(variants(json.loads(base.to_str()))["llama3"][0]))
        gguf = os.path.join(tmp, "llama3.gguf")
        size = write_gguf(gguf, llama3, nrng, "llama-bpe", tied=False, add_bos=True)
        failures += check_model(tool, tmp, "llama3", gguf, size, rng, llama3)

        failures += check_refusals(tmp, smol, nrng)
    for f in failures[:20]:
        print("FAIL", f, file=sys.stderr)
    print(f"gguf_import_test: {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
