"""The forward pass of engine/README.md, Models, in torch, for training and measuring drafts.

LLaMA (the target, or a dense draft) and LLaMA-MoE (the draft: g = W2 tanh(W1 x), top-k of g,
softmax over those k, y = score_scale_factor * sum_j w_j Expert_j(x)), RMSNorm, RoPE in
transformers' rotate-half layout, grouped-query attention, tied embeddings. Parameters carry
the Hugging Face tensor names of modeling_llama.py / LLaMA-MoE's modeling_llama_moe.py, so a
state dict is a model folder's model.safetensors (read_safetensors / write_safetensors: the
format's u64 header length + JSON header + raw little-endian data).

Shapes: tokens [B, T] int64; hidden [B, T, H]; logits [N, V] (only the rows asked for).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import make_demo_models  # noqa: E402  (deploy/make_demo_models.py: its safetensors writer)

ST_DTYPES = {"F16": np.float16, "F32": np.float32, "BF16": None}


def read_safetensors(path):
    """name -> float32 torch tensor."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        if h["dtype"] not in ("F16", "F32"):
            raise ValueError(f"{path}: {name}: dtype {h['dtype']} not handled")
        arr = np.frombuffer(data[a:b], dtype=ST_DTYPES[h["dtype"]]).reshape(h["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float32))
    return out


def write_safetensors(path, tensors, dtype="f16"):
    """name -> torch tensor, written by deploy/make_demo_models.py's writer in `dtype`."""
    make_demo_models.write_safetensors(
        path, {name: t.detach().float().numpy() for name, t in tensors.items()}, dtype)


class Llama(torch.nn.Module):
    """A LLaMA or LLaMA-MoE causal LM built from an HF config dict. Not thread-safe."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.moe = cfg["model_type"] == "llama_moe"
        h, v = cfg["hidden_size"], cfg["vocab_size"]
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg.get("num_key_value_heads", self.nh)
        self.hd = cfg.get("head_dim", h // self.nh)
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        theta = cfg.get("rope_theta", 10000.0)
        inv = theta ** (-torch.arange(0, self.hd // 2, dtype=torch.float64) * 2.0 / self.hd)
        self.register_buffer("inv_freq", inv.float(), persistent=False)
        p = {}
        p["model.embed_tokens.weight"] = (v, h)
        p["model.norm.weight"] = (h,)
        if not cfg.get("tie_word_embeddings", False):
            p["lm_head.weight"] = (v, h)
        for i in range(cfg["num_hidden_layers"]):
            pre = f"model.layers.{i}."
            p[pre + "input_layernorm.weight"] = (h,)
            p[pre + "post_attention_layernorm.weight"] = (h,)
            p[pre + "self_attn.q_proj.weight"] = (self.nh * self.hd, h)
            p[pre + "self_attn.k_proj.weight"] = (self.nkv * self.hd, h)
            p[pre + "self_attn.v_proj.weight"] = (self.nkv * self.hd, h)
            p[pre + "self_attn.o_proj.weight"] = (h, self.nh * self.hd)
            if not self.moe:
                m = cfg["intermediate_size"]
                p[pre + "mlp.gate_proj.weight"] = (m, h)
                p[pre + "mlp.up_proj.weight"] = (m, h)
                p[pre + "mlp.down_proj.weight"] = (h, m)
                continue
            e = cfg["num_experts"]
            p[pre + "mlp.gate.gate_network.0.weight"] = (e, h)
            p[pre + "mlp.gate.gate_network.2.weight"] = (e, e)
            for j, size in enumerate(cfg["size_experts"][i]):
                ex = pre + "mlp.calculator.experts."
                p[ex + f"weight_gate.{j}"] = (size, h)
                p[ex + f"weight_up.{j}"] = (size, h)
                p[ex + f"weight_down.{j}"] = (h, size)
        self.names = sorted(p)
        self.params = torch.nn.ParameterList()
        self.index = {}
        for name in self.names:
            self.index[name] = len(self.params)
            self.params.append(torch.nn.Parameter(torch.zeros(p[name])))
        self.aux_loss = torch.zeros(())

    def w(self, name):
        return self.params[self.index[name]]

    def state(self):
        """HF name -> tensor (what model.safetensors holds)."""
        return {n: self.w(n) for n in self.names}

    def load(self, tensors):
        with torch.no_grad():
            for n in self.names:
                self.w(n).copy_(tensors[n])

    def init_random(self, seed):
        g = torch.Generator().manual_seed(seed)
        layers = self.cfg["num_hidden_layers"]
        with torch.no_grad():
            for n in self.names:
                t = self.w(n)
                if n.endswith("norm.weight"):
                    t.fill_(1.0)
                elif n.endswith("gate_network.2.weight"):
                    t.normal_(0.0, 1.0 / math.sqrt(t.shape[1]), generator=g)
                else:
                    std = 1.0 / math.sqrt(t.shape[1])
                    if n.endswith(("o_proj.weight", "down_proj.weight")) or "weight_down" in n:
                        std /= math.sqrt(2 * layers)
                    if "weight_down" in n:
                        std /= self.cfg.get("score_scale_factor", 1.0)
                    t.normal_(0.0, std, generator=g)

    def norm(self, x, name):
        return self.w(name) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def rope(self, x):                                       # x [B, heads, T, hd]
        pos = torch.arange(x.shape[2], dtype=torch.float32)
        ang = torch.outer(pos, self.inv_freq)                # [T, hd/2]
        cos, sin = ang.cos(), ang.sin()
        x1, x2 = x[..., :self.hd // 2], x[..., self.hd // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def attention(self, pre, x):                             # x [B, T, H]
        b, t, _ = x.shape
        q = (x @ self.w(pre + "self_attn.q_proj.weight").T).view(b, t, self.nh, self.hd)
        k = (x @ self.w(pre + "self_attn.k_proj.weight").T).view(b, t, self.nkv, self.hd)
        v = (x @ self.w(pre + "self_attn.v_proj.weight").T).view(b, t, self.nkv, self.hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = self.rope(q), self.rope(k)
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)   # [B, heads, T, T]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, float("-inf")).softmax(-1)
        a = (s @ v).transpose(1, 2).reshape(b, t, self.nh * self.hd)
        return a @ self.w(pre + "self_attn.o_proj.weight").T

    def ffn(self, i, x):                                     # x [B, T, H]
        pre = f"model.layers.{i}."
        if not self.moe:
            g = x @ self.w(pre + "mlp.gate_proj.weight").T
            u = x @ self.w(pre + "mlp.up_proj.weight").T
            return (F.silu(g) * u) @ self.w(pre + "mlp.down_proj.weight").T
        shape = x.shape
        x = x.reshape(-1, shape[-1])                         # [N, H]
        gl = torch.tanh(x @ self.w(pre + "mlp.gate.gate_network.0.weight").T) @ \
            self.w(pre + "mlp.gate.gate_network.2.weight").T  # [N, E]
        k = self.cfg["num_selects"]
        top_v, top_i = gl.topk(k, dim=-1)                    # [N, k]
        wts = top_v.softmax(-1)
        # Load balance (training only): squared coefficient of variation of the experts'
        # mean full-softmax probability, as LLaMA-MoE's balanced gate penalises importance.
        imp = gl.softmax(-1).mean(0)
        self.aux_loss = self.aux_loss + imp.var() / (imp.mean() ** 2 + 1e-10)
        y = torch.zeros_like(x)
        ex = pre + "mlp.calculator.experts."
        for e in range(self.cfg["num_experts"]):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            xe = x[rows]
            h = F.silu(xe @ self.w(ex + f"weight_gate.{e}").T) * (xe @ self.w(ex + f"weight_up.{e}").T)
            out = (h @ self.w(ex + f"weight_down.{e}").T) * wts[rows, slot].unsqueeze(-1)
            y = y.index_add(0, rows, out)
        return (self.cfg["score_scale_factor"] * y).view(shape)

    def hidden(self, tokens):
        """Final-norm hidden states [B, T, H] of tokens [B, T] (causal, from position 0)."""
        self.aux_loss = torch.zeros(())
        h = self.w("model.embed_tokens.weight")[tokens]
        for i in range(self.cfg["num_hidden_layers"]):
            pre = f"model.layers.{i}."
            h = h + self.attention(pre, self.norm(h, pre + "input_layernorm.weight"))
            h = h + self.ffn(i, self.norm(h, pre + "post_attention_layernorm.weight"))
        return self.norm(h, "model.norm.weight")

    def head(self):
        if self.cfg.get("tie_word_embeddings", False):
            return self.w("model.embed_tokens.weight")
        return self.w("lm_head.weight")

    def logits(self, hidden_rows):                           # [N, H] -> [N, V]
        return hidden_rows @ self.head().T

    def active_params(self):
        """Parameters one token reads (engine/model: the num_selects largest experts)."""
        c, n = self.cfg, 0
        for name in self.names:
            if "calculator.experts" in name:
                continue
            n += self.w(name).numel()
        if self.moe:
            for i in range(c["num_hidden_layers"]):
                sizes = sorted(c["size_experts"][i], reverse=True)[:c["num_selects"]]
                n += sum(3 * s * c["hidden_size"] for s in sizes)
        return n
