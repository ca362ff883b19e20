"""Distils a small LLaMA-MoE (or dense LLaMA) draft for SmolLM2-135M-Instruct on one CPU thread.

Sequence-level distillation: the draft learns next-token prediction (cross-entropy on the
answer tokens only) on the target's own greedy answers (gen_data.py). The tied embedding starts
as a linear projection of the target's: its top-H right singular vectors (uncentred SVD of the
[49152, 576] embedding), scaled to unit mean row norm, so that the output layer starts out
ranking tokens the way the target's does along its main directions; every other weight is
random. AdamW, linear warm-up then cosine decay over a wall-time budget (--minutes) or a fixed
--steps (the dense comparison reuses the MoE run's step count). Writes a checkpoint (torch) and
a log line per --log-every steps.

    /usr/bin/python3 deploy/demo/train.py --arch moe --data build/distill/train.jsonl \
        --target build/models/smollm2-135m-instruct --steps 170 --lr 3e-3 \
        --out build/distill/moe.pt          # then --init-from it (engine/README.md's recipe)

Needs torch (Debian's python3-torch); runs with torch.set_num_threads(1).
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_torch  # noqa: E402

EOS = 2  # <|im_end|>: a finished answer ends with it


def draft_config(arch, hidden, layers, heads, kv_heads, experts, expert_size, top_k):
    """The engine's draft config: deploy/make_demo_models.py's LLaMA-MoE keys, or plain LLaMA."""
    common = {
        "vocab_size": 49152, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "rope_scaling": None, "tie_word_embeddings": True,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16",
    }
    if arch == "dense":
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "intermediate_size": top_k * expert_size, "attention_bias": False,
                "mlp_bias": False, **common}
    return {
        "architectures": ["LlamaMoEForCausalLM"], "model_type": "llama_moe",
        "intermediate_size": experts * expert_size, **common,
        "num_experts": experts, "num_selects": top_k,
        "size_experts": [[expert_size] * experts for _ in range(layers)],
        "score_scale_factor": experts / top_k, "multiply_gate_scores": True, "gates": "mlp",
        "gate_type": "TopKBalancedNoisyGate", "gate_network": "mlp", "gate_use_softmax": True,
        "gate_add_noise": True, "gate_noise_epsilon": 0.01,
        "calculator_type": "UniversalCalculator",
    }


def load_data(path):
    seqs = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            answer = r["answer_ids"] + ([EOS] if r.get("finish") == "stop" else [])
            seqs.append((r["prompt_ids"], answer))
    return seqs


def batches(seqs, tokens_per_batch, rng):
    """Shuffled batches of whole sequences holding about tokens_per_batch answer tokens."""
    order = list(range(len(seqs)))
    rng.shuffle(order)
    batch, count = [], 0
    for i in order:
        batch.append(seqs[i])
        count += len(seqs[i][1])
        if count >= tokens_per_batch:
            yield batch
            batch, count = [], 0


def step_loss(model, batch, vocab, negatives, gen):
    """Mean cross-entropy over answer tokens, and the MoE balance loss.

    The softmax runs over `vocab` (every token of the training answers) plus `negatives`
    tokens drawn afresh each step from the rest of the vocabulary (a sampled softmax: 4-5x
    less output-layer work than the full 49152 rows; the rest of the vocabulary still gets
    pushed down, and the measurement of tests/README.md uses the full vocabulary)."""
    rows = [p + a for p, a in batch]
    t = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(r)
    h = model.hidden(tokens)                                  # [B, T, H]
    sel_b, sel_t, labels = [], [], []
    for i, (p, a) in enumerate(batch):
        n = len(a)
        sel_b += [i] * n
        sel_t += range(len(p) - 1, len(p) - 1 + n)           # position j predicts token j+1
        labels += a
    rows_h = h[torch.tensor(sel_b), torch.tensor(sel_t)]       # [N, H]
    rest = vocab["rest"] if negatives is None else \
        vocab["rest"][torch.randint(len(vocab["rest"]), (negatives,), generator=gen)]
    ids = torch.cat([vocab["keep"], rest])                    # [S]
    logits = rows_h @ model.head()[ids].T                     # [N, S]
    ce = torch.nn.functional.cross_entropy(logits, vocab["slot"][torch.tensor(labels)])
    return ce, model.aux_loss, len(labels)


def init_embedding(model, target_dir):
    emb = llama_torch.read_safetensors(os.path.join(target_dir, "model.safetensors"))[
        "model.embed_tokens.weight"]                           # [V, 576]
    h = model.cfg["hidden_size"]
    _, _, vt = torch.linalg.svd(emb, full_matrices=False)     # vt [576, 576]
    proj = emb @ vt[:h].T                                     # [V, h]
    proj = proj / proj.norm(dim=1).mean()
    with torch.no_grad():
        model.w("model.embed_tokens.weight").copy_(proj)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["moe", "dense"], default="moe")
    ap.add_argument("--data", required=True)
    ap.add_argument("--target", required=True, help="the target's HF folder (embedding init)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--expert-size", type=int, default=384)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--tokens-per-batch", type=int, default=2048)
    ap.add_argument("--aux-weight", type=float, default=0.01)
    ap.add_argument("--negatives", type=int, default=4096,
                    help="sampled tokens outside the data's vocabulary per step (-1: full softmax)")
    ap.add_argument("--minutes", type=float, default=0, help="wall-time budget (0: --steps)")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="with --steps: stop early at this wall time (0: never)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-from", help="continue from a checkpoint of this script (its "
                    "config and weights; a fresh optimizer and schedule)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if (args.minutes > 0) == (args.steps > 0):
        ap.error("give exactly one of --minutes and --steps")

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cfg = draft_config(args.arch, args.hidden, args.layers, args.heads, args.kv_heads,
                       args.experts, args.expert_size, args.top_k)
    prior = torch.load(args.init_from) if args.init_from else None
    if prior is not None:
        cfg = prior["config"]
    model = llama_torch.Llama(cfg)
    if prior is None:
        model.init_random(args.seed)
        init_embedding(model, args.target)
    else:
        model.load(prior["state"])
        print(f"continuing {args.init_from} after {prior['steps']} steps", flush=True)
    total = sum(p.numel() for p in model.parameters())
    print(f"{args.arch}: {total / 1e6:.2f}M parameters, {model.active_params() / 1e6:.2f}M "
          f"active per token", flush=True)
    seqs = load_data(args.data)
    print(f"data: {len(seqs)} answers, {sum(len(a) for _, a in seqs)} answer tokens", flush=True)

    used = sorted({t for _, a in seqs for t in a})
    keep = torch.tensor(used)
    mask = torch.ones(cfg["vocab_size"], dtype=torch.bool)
    mask[keep] = False
    slot = torch.full((cfg["vocab_size"],), -1, dtype=torch.long)
    slot[keep] = torch.arange(len(used))
    vocab = {"keep": keep, "rest": mask.nonzero().flatten(), "slot": slot}
    negatives = None if args.negatives < 0 else args.negatives
    print(f"softmax over {len(used)} data tokens + "
          f"{'all other' if negatives is None else negatives} tokens", flush=True)
    gen = torch.Generator().manual_seed(args.seed)

    decay = [p for n, p in zip(model.names, model.params) if not n.endswith("norm.weight")]
    no_decay = [p for n, p in zip(model.names, model.params) if n.endswith("norm.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    rng = random.Random(args.seed)
    start, step, epoch, done = time.time(), 0, 0, False
    log_ce, log_n = 0.0, 0
    while not done:
        epoch += 1
        for batch in batches(seqs, args.tokens_per_batch, rng):
            frac = (time.time() - start) / (args.minutes * 60) if args.minutes else \
                step / args.steps
            if frac >= 1.0 or (args.max_minutes and
                               time.time() - start > args.max_minutes * 60):
                done = True
                break
            lr = args.lr * min(1.0, (step + 1) / args.warmup) * \
                (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
            for g in opt.param_groups:
                g["lr"] = lr
            ce, aux, n = step_loss(model, batch, vocab, negatives, gen)
            loss = ce + args.aux_weight * aux
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            log_ce += ce.item()
            log_n += 1
            if step % args.log_every == 0:
                print(f"step {step} epoch {epoch} {time.time() - start:.0f}s lr {lr:.2e} "
                      f"ce {log_ce / log_n:.3f} aux {aux.item():.3f}", flush=True)
                log_ce, log_n = 0.0, 0
    elapsed = time.time() - start
    print(f"done: {step} steps, {epoch} epochs, {elapsed:.0f} s", flush=True)
    if prior is not None:
        step += prior["steps"]
        elapsed += prior["seconds"]
        print(f"in all: {step} steps, {elapsed:.0f} s", flush=True)
    torch.save({"config": cfg, "state": {n: t.detach() for n, t in model.state().items()},
                "steps": step, "seconds": elapsed, "args": vars(args)}, args.out)


if __name__ == "__main__":
    main()
