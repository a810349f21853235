"""The benchmark's PyTorch reference: the same LoRA training step as bench/main.ts.

A Llama-style model (RMSNorm, rotary embeddings, causal attention, SwiGLU) with random frozen
weights and LoRA (r 8, alpha 16) on q_proj and v_proj; one step is forward, next-token cross
entropy, backward, gradient clipping to 1 and AdamW on the LoRA parameters only. Attention uses
torch's scaled_dot_product_attention, the fastest path PyTorch offers on a CPU.

Prints one JSON object: tokens per second of each timed repeat and their median, and the
process's peak RSS. Run by bench/main.ts; needs only torch.
"""

import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LoraLinear(nn.Module):
    """y = W x + (alpha / r) B A x, with W frozen; A kaiming-uniform, B zero, as PEFT starts them."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def rotary_tables(seq, head_dim, theta):
    inverse = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float64), inverse)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, heads = c["hidden_size"], c["num_attention_heads"]
        self.heads, self.head_dim = heads, d // heads
        self.input_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.gate_proj = nn.Linear(d, c["intermediate_size"], bias=False)
        self.up_proj = nn.Linear(d, c["intermediate_size"], bias=False)
        self.down_proj = nn.Linear(c["intermediate_size"], d, bias=False)

    def forward(self, h, cos, sin):
        b, t, d = h.shape
        x = self.input_layernorm(h)
        split = lambda y: y.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q = rotate(split(self.q_proj(x)), cos, sin)
        k = rotate(split(self.k_proj(x)), cos, sin)
        v = split(self.v_proj(x))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.o_proj(attended.transpose(1, 2).reshape(b, t, d))
        m = self.post_attention_layernorm(h)
        return h + self.down_proj(F.silu(self.gate_proj(m)) * self.up_proj(m))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        self.theta = c["rope_theta"]

    def forward(self, ids):
        cos, sin = rotary_tables(ids.shape[1], self.layers[0].head_dim, self.theta)
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.lm_head(self.norm(h))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="the model and step settings as JSON (bench/main.ts passes them)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    c = json.loads(args.config)
    torch.manual_seed(c["seed"])
    torch.set_num_threads(args.threads)

    model = Llama(c)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for layer in model.layers:
        layer.q_proj = LoraLinear(layer.q_proj, c["lora_r"], c["lora_alpha"])
        layer.v_proj = LoraLinear(layer.v_proj, c["lora_r"], c["lora_alpha"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, c["vocab_size"], (c["batch_size"], c["seq_length"]))

    def step():
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, c["vocab_size"]), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    tokens = c["batch_size"] * c["seq_length"] * args.steps
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        runs.append(tokens / (time.perf_counter() - start))
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "trainableParameters": sum(p.numel() for p in trainable),
                "tokensPerSecond": statistics.median(runs),
                "runs": runs,
                "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
