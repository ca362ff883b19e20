#!/usr/bin/env python3
"""Creates the demo model pair: a LLaMA target and a LLaMA-MoE draft that agree measurably.

Usage:
  make_demo_models.py --out DIR [--dtype f32|f16] [--preset demo|e2e] [--check]

Writes DIR/target (LlamaForCausalLM, engine/README.md, LLaMA) and DIR/draft
(LlamaMoEForCausalLM, LLaMA-MoE) as Hugging Face folders: config.json, model.safetensors
(written by the small writer below) and tokenizer.model (copied from deploy/demo). Needs only
python3, numpy and sentencepiece (Debian python3-numpy, python3-sentencepiece); no torch.
--check runs both models with a numpy forward pass and prints their greedy agreement and the
target's greedy text. Deterministic: fixed seeds and no linear algebra beyond elementwise
maths; every weight is rounded to the float16 grid (so --dtype f16 gives the same model, and
last-bit differences of libm between machines almost never reach the bytes; the pip
and Debian numpy builds give identical files).

Construction (no training possible here; random weights would never agree):
  From the tokenized demo corpus (deploy/demo/corpus.txt, with <s> at each chapter start)
  take, with Dirichlet smoothing towards the unigram p_u (beta = 2):
    B[x, y] = log p(next = y | cur = x)                 bigram
    S[x, y] = log p(y two ahead | x) - log p_u(y)        skip-bigram association
  The target computes
    logits_y ~ B[cur, y] + alpha * S[prev, y] - lambda * share_y      (alpha 0.7, lambda 5)
  a cheap stand-in for a trigram model with a built-in presence penalty (share_y: the
  fraction of the tokens so far that are y, for the most frequent tokens), so it needs
  attention to see the previous token and the context, and its greedy text does not loop at
  once. The draft computes  logits_y ~ B[cur, y]  with fewer token codes: a bigram model, the
  weaker and cheaper model. On the corpus the target predicts the next token better than the
  draft; they differ where the context changes the prediction, which is what makes the
  agreement realistic rather than tuned noise.

  Residual stream layout (hidden H): dims [0, C-1) carry a constant gamma (a "bias unit");
  dim C-1 is a filler that makes every embedding row the same norm; dims [C, C+K) are one-hot
  codes (amplitude kappa) of the K most frequent tokens (rarer tokens have no code: they
  predict from the unigram bias alone); in the target, R dims then receive the context
  average of the codes of the R most frequent tokens, and the last P dims the code of the
  previous token (if it is among the P most frequent).
    embed[x]              = gamma on [0, C-1), kappa * e_code(x) (or kappa on the filler)
    lm_head[y, const]     = log p_u(y) spread over the constant dims (the bias b_y)
    lm_head[y, code(x)]   = (B[x, y] - b_y) / kappa
    lm_head[y, R_j]       = -lambda / kappa   for y the j-th most frequent token
    lm_head[y, P_j]       = alpha * S[x_j, y] / kappa
  The final norm weight is the embedding rms, so norm(h) ~ h and logits ~ lm_head . h (a
  per-position scale does not change the argmax).
  Target layer 0 reserves P/head_dim "previous-token heads" and R/head_dim "context heads".
  Context heads have q = k = 0: uniform attention over the visible tokens, v = their codes.
  Previous-token heads have q and k reading only the constant dims, so they are the same for
  every token, chosen per RoPE pair i as q_i = (a, 0), k_i = R(theta_i) (a, 0); after RoPE,
  q_m . k_n = a^2 sum_i cos((n+1-m) theta_i), largest at n = m-1. Using the first few
  (highest-frequency) pairs, found by search below, the score margin to every other position
  up to max_position_embeddings is >= 25, so each such head copies the previous token's code
  (v) into the P dims (o_proj).
  Every other weight (the other heads, all later layers, the MLPs, the draft's attention,
  gate and 8 experts) is random, reads and writes only the code dims (never the constant
  dims), and is scaled to perturb the logits slightly; the draft's perturbations differ from
  the target's. The scales were tuned with --check (figures below).

Sizes (demo preset): target 8 layers of hidden 1024 (16 heads, intermediate 2816), vocab
4096, untied: 111.2M parameters, 107.0M read per token (428 MB in f32); draft 1 layer of
hidden 1024, 8 experts of 512, top-2: 25.2M parameters, 11.55M read per token (embedding
row, attention, gate, 2 experts, head: 46 MB in f32), 0.108 of the target (limit 1/8).
Measured with --check: draft top-1 == target top-1 on 65.6% of 384 corpus positions (target
next-token accuracy 22.6%, draft 21.1%) and on 65.0% of the target's own 40 greedy steps.
Takes 15-30 s (--check: a few minutes more, numpy forward passes).
Tested by: --check here; the engine's e2e and speculation tests use the e2e preset
(tests/fixtures/models/e2e_*, made by tests/fixtures/make_fixtures.py).
"""

import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np
import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(HERE, "demo")
CORPUS = os.path.join(DEMO, "corpus.txt")
TOKENIZER = os.path.join(DEMO, "tokenizer.model")

VOCAB = 4096
BOS, EOS = 1, 2
BETA = 2.0      # Dirichlet smoothing towards the unigram
ALPHA = 0.7     # weight of the skip-bigram term in the target
LAMBDA = 5.0    # strength of the target's built-in presence penalty
GAMMA = 1.0     # value of each constant dim
KAPPA = 8.0     # amplitude of a token code
PREV_MARGIN = 25.0  # minimum score margin of the previous-token heads

PRESETS = {
    # ~111M-parameter target; draft reads 0.11 of its bytes per token.
    "demo": dict(hidden=1024, layers=8, heads=16, intermediate=2816, max_pos=2048,
                 const_dims=16, prev_dims=192, recent_dims=128, draft_codes=640,
                 experts=8, expert_size=512, top_k=2,
                 target_noise=0.03, draft_noise=0.06),
    # Small pair for the e2e tests (tests/fixtures/models/e2e_target, e2e_draft).
    "e2e": dict(hidden=128, layers=2, heads=4, intermediate=128, max_pos=256,
                const_dims=8, prev_dims=32, recent_dims=32, draft_codes=120,
                experts=8, expert_size=32, top_k=2,
                target_noise=0.03, draft_noise=0.06),
}


# ----------------------------------------------------------------------------- corpus


def corpus_tokens():
    """The corpus as one token stream: <s> at each chapter start (the heading line is
    dropped), then the chapter's verses one after another."""
    sp = spm.SentencePieceProcessor(model_file=TOKENIZER)
    assert sp.get_piece_size() == VOCAB and sp.bos_id() == BOS
    with open(CORPUS, encoding="utf-8") as f:
        chapters = f.read().strip("\n").split("\n\n")
    seq = []
    for chapter in chapters:
        verses = chapter.split("\n")[1:]
        seq.append(BOS)
        for ids in sp.encode(verses):
            seq.extend(ids)
    return np.array(seq, dtype=np.int64), sp


class Stats:
    """Smoothed bigram and skip-bigram tables of the corpus (float64, exact maths only:
    counts, divisions and logs)."""

    def __init__(self, seq):
        counts = np.bincount(seq, minlength=VOCAB).astype(np.float64)
        self.p_uni = (counts + 0.5) / (counts.sum() + 0.5 * VOCAB)    # [V]
        self.log_uni = np.log(self.p_uni)
        # Tokens by frequency, ties by id (stable sort): the code order.
        self.order = np.argsort(-counts, kind="stable")
        self.seq = seq

    def _table(self, rows, gap):
        """log p(token at t+gap = y | token at t = x) for x in rows: [len(rows), V]."""
        a, b = self.seq[:-gap], self.seq[gap:]
        row_of = np.full(VOCAB, -1, dtype=np.int64)
        row_of[rows] = np.arange(len(rows))
        keep = row_of[a] >= 0
        idx = row_of[a[keep]] * VOCAB + b[keep]
        c = np.bincount(idx, minlength=len(rows) * VOCAB).astype(np.float64)
        c = c.reshape(len(rows), VOCAB)
        return np.log((c + BETA * self.p_uni[None, :]) / (c.sum(1, keepdims=True) + BETA))

    def bigram(self, rows):
        return self._table(rows, 1)

    def skip(self, rows):
        return self._table(rows, 2) - self.log_uni[None, :]


# ----------------------------------------------------------------------------- weights


def f16_grid(a):
    """Rounds to the nearest float16 value, kept as float32."""
    return np.asarray(a, dtype=np.float64).astype(np.float16).astype(np.float32)


def rope_pairs(head_dim, max_pos, theta=10000.0):
    """(n, margin): use the first n RoPE pairs equally; margin is the worst gap between the
    score at the previous token and any other visible position, for sum_i w_i = 1."""
    inv = theta ** (-np.arange(head_dim // 2) * 2.0 / head_dim)
    d = np.arange(-max_pos, 2)                      # n + 1 - m over visible positions
    best = (0, -1.0)
    for n in range(1, head_dim // 2 + 1):
        k = np.cos(np.outer(d, inv[:n])).mean(1)
        margin = 1.0 - k[d != 0].max()
        if margin > best[1]:
            best = (n, margin)
    return best[0], best[1], inv


def random_block(rng, rows, cols, std):
    return rng.standard_normal((rows, cols)) * std


def restrict(w, out_dims, in_dims):
    """Zeroes w outside rows out_dims x columns in_dims (perturbations touch codes only)."""
    m = np.zeros_like(w)
    m[np.ix_(out_dims, in_dims)] = w[np.ix_(out_dims, in_dims)]
    return m


class Builder:
    """Builds the tensors of one preset. Not thread-safe; cost: a few seconds."""

    def __init__(self, p, stats):
        self.p = p
        self.stats = stats
        h, c = p["hidden"], p["const_dims"]
        self.h, self.c = h, c
        self.head_dim = h // p["heads"]
        # Norm of every embedding row: (c-1) gamma^2 + kappa^2.
        self.rms = np.sqrt(((c - 1) * GAMMA ** 2 + KAPPA ** 2) / h)

    def embed_and_head(self, n_codes, prev_dims=0, recent_dims=0):
        """embed [V, H], lm_head [V, H], final norm weight [H] for n_codes cur codes,
        prev_dims previous-token codes (dims [H - prev_dims, H)) and recent_dims
        context-average codes (the recent_dims dims before those)."""
        h, c, st = self.h, self.c, self.stats
        top = st.order[:n_codes]
        embed = np.zeros((VOCAB, h))
        embed[:, :c - 1] = GAMMA
        embed[:, c - 1] = KAPPA                       # filler for tokens without a code
        embed[top, c - 1] = 0.0
        embed[top, c + np.arange(n_codes)] = KAPPA
        head = np.zeros((VOCAB, h))
        head[:, :c - 1] = (st.log_uni / ((c - 1) * GAMMA))[:, None]
        bigram = st.bigram(top)                       # [n_codes, V]
        head[:, c:c + n_codes] = ((bigram - st.log_uni[None, :]) / KAPPA).T
        if prev_dims:
            skip = st.skip(st.order[:prev_dims])      # [prev_dims, V]
            head[:, h - prev_dims:] = (ALPHA * skip / KAPPA).T
        if recent_dims:
            r0 = h - prev_dims - recent_dims
            head[st.order[:recent_dims], r0 + np.arange(recent_dims)] = -LAMBDA / KAPPA
        norm = np.full(h, self.rms)
        return embed, head, norm

    def context_heads(self, n_codes):
        """q, k, v [P+R, H] and o [H, P+R] of the reserved heads of target layer 0.
        Previous-token heads (rows [0, P)) copy the previous token's code j (j < P) to dim
        H - P + j. Context heads (rows [P, P+R)) have q = k = 0, so they attend uniformly
        to every visible position, and average the codes j < R of the tokens so far into
        dims H - P - R + j: lm_head turns that into a presence penalty -LAMBDA * share."""
        p, h, c, hd = self.p, self.h, self.c, self.head_dim
        pd, rd = p["prev_dims"], p["recent_dims"]
        assert pd % hd == 0 and rd % hd == 0 and max(pd, rd) <= n_codes
        n_pairs, margin, inv = rope_pairs(hd, p["max_pos"])
        # score margin = a^2 * n_pairs * margin / sqrt(hd) >= PREV_MARGIN
        a = np.sqrt(PREV_MARGIN * np.sqrt(hd) / (n_pairs * margin))
        const_in = (c - 1) * GAMMA / self.rms         # sum of the normed constant dims
        q = np.zeros((pd + rd, h))
        k = np.zeros((pd + rd, h))
        v = np.zeros((pd + rd, h))
        o = np.zeros((h, pd + rd))
        for head in range(pd // hd):
            base = head * hd
            for i in range(n_pairs):
                q[base + i, :c - 1] = a / const_in
                k[base + i, :c - 1] = a * np.cos(inv[i]) / const_in
                k[base + i + hd // 2, :c - 1] = a * np.sin(inv[i]) / const_in
        for j in range(pd):
            v[j, c + j] = self.rms                    # normed code value kappa/rms -> kappa
            o[h - pd + j, j] = 1.0
        for j in range(rd):
            v[pd + j, c + j] = self.rms
            o[h - pd - rd + j, pd + j] = 1.0
        self.prev_info = (n_pairs, margin)
        return q, k, v, o

    def code_dims(self):
        return np.arange(self.c, self.h)

    def attention(self, rng, noise, heads_reserved=0):
        """Random q, k, v, o [H, H] reading/writing the code dims; o scaled by `noise`."""
        h, hd = self.h, self.head_dim
        code = self.code_dims()
        q = restrict(random_block(rng, h, h, 1.0 / np.sqrt(len(code))), np.arange(h), code)
        k = restrict(random_block(rng, h, h, 1.0 / np.sqrt(len(code))), np.arange(h), code)
        v = restrict(random_block(rng, h, h, 1.0 / np.sqrt(len(code))), np.arange(h), code)
        o = restrict(random_block(rng, h, h, noise / np.sqrt(h)), code, np.arange(h))
        if heads_reserved:
            r = heads_reserved * hd
            q[:r] = k[:r] = v[:r] = 0.0
            o[:, :r] = 0.0
        return q, k, v, o

    def mlp(self, rng, size, noise):
        """Random gate, up [size, H] and down [H, size] on the code dims."""
        h = self.h
        code = self.code_dims()
        gate = restrict(random_block(rng, size, h, 1.0 / np.sqrt(len(code))), np.arange(size), code)
        up = restrict(random_block(rng, size, h, 1.0 / np.sqrt(len(code))), np.arange(size), code)
        down = restrict(random_block(rng, h, size, noise / np.sqrt(size)), code, np.arange(size))
        return gate, up, down

    def target(self):
        p = self.p
        rng = np.random.default_rng(1001)
        pd, rd = p["prev_dims"], p["recent_dims"]
        n_codes = self.h - self.c - pd - rd
        embed, head, norm = self.embed_and_head(n_codes, pd, rd)
        t = {"model.embed_tokens.weight": embed, "lm_head.weight": head, "model.norm.weight": norm}
        reserved = (pd + rd) // self.head_dim
        # target_noise is the total over the 2 * layers random blocks (independent noise).
        noise = p["target_noise"] / np.sqrt(2 * p["layers"])
        for i in range(p["layers"]):
            pre = f"model.layers.{i}."
            q, k, v, o = self.attention(rng, noise, reserved if i == 0 else 0)
            if i == 0:
                q[:pd + rd], k[:pd + rd], v[:pd + rd], o[:, :pd + rd] = self.context_heads(n_codes)
            gate, up, down = self.mlp(rng, p["intermediate"], noise)
            t.update({
                pre + "input_layernorm.weight": np.ones(self.h),
                pre + "post_attention_layernorm.weight": np.ones(self.h),
                pre + "self_attn.q_proj.weight": q, pre + "self_attn.k_proj.weight": k,
                pre + "self_attn.v_proj.weight": v, pre + "self_attn.o_proj.weight": o,
                pre + "mlp.gate_proj.weight": gate, pre + "mlp.up_proj.weight": up,
                pre + "mlp.down_proj.weight": down,
            })
        return {k: f16_grid(v) for k, v in t.items()}

    def draft(self):
        p = self.p
        rng = np.random.default_rng(2002)
        embed, head, norm = self.embed_and_head(p["draft_codes"])
        t = {"model.embed_tokens.weight": embed, "lm_head.weight": head, "model.norm.weight": norm}
        pre = "model.layers.0."
        noise = p["draft_noise"] / np.sqrt(2)      # over attention and experts
        q, k, v, o = self.attention(rng, noise)
        e = p["experts"]
        code = self.code_dims()
        w1 = restrict(random_block(rng, e, self.h, 1.0 / np.sqrt(len(code))), np.arange(e), code)
        t.update({
            pre + "input_layernorm.weight": np.ones(self.h),
            pre + "post_attention_layernorm.weight": np.ones(self.h),
            pre + "self_attn.q_proj.weight": q, pre + "self_attn.k_proj.weight": k,
            pre + "self_attn.v_proj.weight": v, pre + "self_attn.o_proj.weight": o,
            pre + "mlp.gate.gate_network.0.weight": w1,
            pre + "mlp.gate.gate_network.2.weight": random_block(rng, e, e, 1.0),
            pre + "mlp.gate.weight_noise.weight": np.zeros((e, self.h)),
        })
        for j in range(e):
            # y = score_scale_factor * sum_j w_j expert_j: divide by the factor (4).
            gate, up, down = self.mlp(rng, p["expert_size"], noise / 4.0)
            ex = pre + "mlp.calculator.experts."
            t[ex + f"weight_gate.{j}"] = gate
            t[ex + f"weight_up.{j}"] = up
            t[ex + f"weight_down.{j}"] = down
        return {k: f16_grid(v) for k, v in t.items()}


# ----------------------------------------------------------------------------- files


def write_safetensors(path, tensors, dtype):
    """safetensors: u64 LE header length, JSON header (sorted names, data_offsets relative
    to the data start, padded with spaces to 8 bytes), then the raw little-endian data."""
    np_dtype, st_dtype = {"f32": ("<f4", "F32"), "f16": ("<f2", "F16")}[dtype]
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name].astype(np_dtype)).tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def target_config(p, dtype):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": VOCAB, "hidden_size": p["hidden"],
        "intermediate_size": p["intermediate"], "num_hidden_layers": p["layers"],
        "num_attention_heads": p["heads"], "num_key_value_heads": p["heads"],
        "head_dim": p["hidden"] // p["heads"],
        "max_position_embeddings": p["max_pos"], "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "rope_scaling": None, "tie_word_embeddings": False, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "bos_token_id": BOS,
        "eos_token_id": EOS, "torch_dtype": {"f32": "float32", "f16": "float16"}[dtype],
    }


def draft_config(p, dtype):
    return {
        "architectures": ["LlamaMoEForCausalLM"], "model_type": "llama_moe",
        "vocab_size": VOCAB, "hidden_size": p["hidden"],
        "intermediate_size": p["experts"] * p["expert_size"], "num_hidden_layers": 1,
        "num_attention_heads": p["heads"], "num_key_value_heads": p["heads"],
        "max_position_embeddings": p["max_pos"], "rms_norm_eps": 1e-6,
        "rope_scaling": None, "tie_word_embeddings": False, "hidden_act": "silu",
        "bos_token_id": BOS, "eos_token_id": EOS,
        "torch_dtype": {"f32": "float32", "f16": "float16"}[dtype],
        "num_experts": p["experts"], "num_selects": p["top_k"],
        "size_experts": [[p["expert_size"]] * p["experts"]],
        "score_scale_factor": 4.0, "multiply_gate_scores": True, "gates": "mlp",
        "gate_type": "TopKBalancedNoisyGate", "gate_network": "mlp", "gate_use_softmax": True,
        "gate_add_noise": True, "gate_noise_epsilon": 0.01,
        "calculator_type": "UniversalCalculator",
    }


def write_folder(path, config, tensors, dtype):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(path, "model.safetensors"), tensors, dtype)
    shutil.copyfile(TOKENIZER, os.path.join(path, "tokenizer.model"))


# ----------------------------------------------------------------------------- check


class NumpyModel:
    """Reference forward pass of engine/README.md, Models, in float32 with a KV cache.
    Not thread-safe; cost: one read of every weight per call."""

    def __init__(self, t, cfg):
        self.t, self.cfg = t, cfg
        self.hd = cfg["hidden_size"] // cfg["num_attention_heads"]
        self.nh = cfg["num_attention_heads"]
        self.eps = cfg["rms_norm_eps"]
        theta = cfg.get("rope_theta", 10000.0)
        self.inv = (theta ** (-np.arange(self.hd // 2) * 2.0 / self.hd)).astype(np.float32)
        self.reset()

    def reset(self):
        self.cache = [([], []) for _ in range(self.cfg["num_hidden_layers"])]
        self.pos = 0

    def norm(self, x, w):
        return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps))

    def rope(self, x, pos):                       # x [n, heads, hd]
        ang = np.outer(pos, self.inv)             # [n, hd/2]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x1, x2 = x[..., :self.hd // 2], x[..., self.hd // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def ffn(self, pre, x):                        # x [n, H]
        t = self.t
        if self.cfg["model_type"] == "llama":
            g = x @ t[pre + "mlp.gate_proj.weight"].T
            u = x @ t[pre + "mlp.up_proj.weight"].T
            return (g / (1 + np.exp(-g)) * u) @ t[pre + "mlp.down_proj.weight"].T
        # g = W2 tanh(W1 x); top-k; softmax over the k; y = scale * sum w_j expert_j(x)
        gl = np.tanh(x @ t[pre + "mlp.gate.gate_network.0.weight"].T) @ \
            t[pre + "mlp.gate.gate_network.2.weight"].T            # [n, E]
        k = self.cfg["num_selects"]
        top = np.argsort(-gl, axis=1, kind="stable")[:, :k]
        y = np.zeros_like(x)
        ex = pre + "mlp.calculator.experts."
        for r in range(x.shape[0]):
            s = gl[r, top[r]]
            w = np.exp(s - s.max())
            w /= w.sum()
            for j, e in enumerate(top[r]):
                g = t[ex + f"weight_gate.{e}"] @ x[r]
                u = t[ex + f"weight_up.{e}"] @ x[r]
                y[r] += w[j] * (t[ex + f"weight_down.{e}"] @ (g / (1 + np.exp(-g)) * u))
        return self.cfg["score_scale_factor"] * y

    def forward(self, tokens):
        """Appends tokens to the sequence; returns their logits [n, V]."""
        t, nh, hd = self.t, self.nh, self.hd
        n = len(tokens)
        pos = np.arange(self.pos, self.pos + n)
        h = t["model.embed_tokens.weight"][np.asarray(tokens)]
        for i in range(self.cfg["num_hidden_layers"]):
            pre = f"model.layers.{i}."
            x = self.norm(h, t[pre + "input_layernorm.weight"])
            q = self.rope((x @ t[pre + "self_attn.q_proj.weight"].T).reshape(n, nh, hd), pos)
            k = self.rope((x @ t[pre + "self_attn.k_proj.weight"].T).reshape(n, nh, hd), pos)
            v = (x @ t[pre + "self_attn.v_proj.weight"].T).reshape(n, nh, hd)
            ks, vs = self.cache[i]
            ks.append(k)
            vs.append(v)
            K, Vv = np.concatenate(ks), np.concatenate(vs)   # [T, heads, hd]
            s = np.einsum("nhd,thd->hnt", q, K) / np.sqrt(hd)
            s = np.where(np.arange(len(K))[None, None, :] <= pos[None, :, None], s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = np.einsum("hnt,thd->nhd", s, Vv).reshape(n, nh * hd)
            h = h + a @ t[pre + "self_attn.o_proj.weight"].T
            h = h + self.ffn(pre, self.norm(h, t[pre + "post_attention_layernorm.weight"]))
        self.pos += n
        return self.norm(h, t["model.norm.weight"]) @ t["lm_head.weight"].T

    def generate(self, prompt, steps, rng=None, temperature=1.0):
        """Greedy continuation, or sampled at `temperature` when rng is given."""
        self.reset()
        logits = self.forward(prompt)
        out = []
        for _ in range(steps):
            if rng is None:
                tok = int(np.argmax(logits[-1]))
            else:
                z = logits[-1].astype(np.float64) / temperature
                pr = np.exp(z - z.max())
                tok = int(rng.choice(len(pr), p=pr / pr.sum()))
            out.append(tok)
            logits = self.forward([tok])
        return out


def check(target, draft, tcfg, dcfg, seq, sp, segments=4, length=96):
    tm, dm = NumpyModel(target, tcfg), NumpyModel(draft, dcfg)
    agree = t_ok = d_ok = total = 0
    for s in range(segments):
        start = (len(seq) // segments) * s + 1000
        toks = [BOS] + list(seq[start:start + length - 1])
        tm.reset()
        dm.reset()
        ta = tm.forward(toks).argmax(1)
        da = dm.forward(toks).argmax(1)
        nxt = np.array(toks[1:])
        agree += int((ta == da).sum())
        t_ok += int((ta[:-1] == nxt).sum())
        d_ok += int((da[:-1] == nxt).sum())
        total += len(toks)
    print(f"corpus positions: {total}; draft top-1 == target top-1: {100.0 * agree / total:.1f}%"
          f"; next-token accuracy: target {100.0 * t_ok / (total - segments):.1f}%, "
          f"draft {100.0 * d_ok / (total - segments):.1f}%")
    prompt = [BOS] + sp.encode("And God said")
    gen = tm.generate(prompt, 40)
    dm.reset()
    da = dm.forward(prompt + gen[:-1]).argmax(1)[len(prompt) - 1:]
    print(f"on the target's greedy continuation, the draft agrees on "
          f"{100.0 * float((da == np.array(gen)).mean()):.1f}% of 40 steps")
    print("target greedy:", repr(sp.decode(prompt + gen)))
    print("draft greedy: ", repr(sp.decode(prompt + dm.generate(prompt, 40))))
    sampled = tm.generate(prompt, 60, np.random.default_rng(7), temperature=0.8)
    print("target sampled (temperature 0.8, seed 7):", repr(sp.decode(prompt + sampled)))


def main():
    ap = argparse.ArgumentParser(description="Create the demo target/draft model pair.")
    ap.add_argument("--out", required=True, help="output folder (gets target/ and draft/)")
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    ap.add_argument("--check", action="store_true",
                    help="measure draft/target agreement with a numpy forward pass")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    seq, sp = corpus_tokens()
    b = Builder(p, Stats(seq))
    target, draft = b.target(), b.draft()
    tcfg, dcfg = target_config(p, args.dtype), draft_config(p, args.dtype)
    write_folder(os.path.join(args.out, "target"), tcfg, target, args.dtype)
    write_folder(os.path.join(args.out, "draft"), dcfg, draft, args.dtype)
    n_pairs, margin = b.prev_info
    t_params = sum(v.size for v in target.values())
    print(f"wrote {args.out}/target ({t_params / 1e6:.1f}M parameters) and {args.out}/draft "
          f"({sum(v.size for v in draft.values()) / 1e6:.1f}M); previous-token heads use "
          f"{n_pairs} RoPE pairs, relative margin {margin:.3f}")
    if args.check:
        check(target, draft, tcfg, dcfg, seq, sp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
