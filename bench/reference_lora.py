"""The benchmark's PyTorch reference: the same LoRA training step as bench/trainer-bench.ts.

    reference_lora.py train --model DIR --settings JSON --threads N [--warmup N --steps N --repeats N]
    reference_lora.py matmul --threads N [--size 2048 --repeats 3]

`--device cuda` runs either task on the GPU (bench/gpu.sh) and adds the GPU's name and the peak
of torch's GPU allocations to the JSON object.

`train` builds the model of a Hugging Face model folder (config.json + model.safetensors, the
folder bench/main.ts writes and the trainer loads) as transformers' LlamaForCausalLM and
Qwen2ForCausalLM compute it: RMSNorm, rotary embeddings, causal grouped-query attention
(num_key_value_heads), SwiGLU, bias on q/k/v for Qwen2 (or Llama's attention_bias), the output
head tied to the embeddings when tie_word_embeddings says so. The weights are the folder's,
widened to float32, so the first step's loss must equal the trainer's. LoRA (A kaiming-uniform,
B zero, as PEFT starts them) wraps the settings' target modules; one step is forward,
next-token cross entropy, backward, gradient clipping to 1 and AdamW on the LoRA parameters
only. Attention uses torch's scaled_dot_product_attention, the fastest path PyTorch has on a CPU.

`matmul` measures float32 size x size x size matrix products, the machine's reference FLOP rate:
the fastest of the repeats, since it is a peak rate and slower ones measure other work on the
machine.

Prints one JSON object. Run by bench/main.ts with the interpreter of scripts/python-env.sh.
"""

import argparse
import json
import math
import os
import resource
import statistics
import time

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LoraLinear(nn.Module):
    """y = W x + b + (alpha / r) B A x, with W and b frozen."""

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


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads", self.heads)
        self.head_dim = c.get("head_dim") or d // self.heads
        qwen2 = c["architectures"][0] == "Qwen2ForCausalLM"
        qkv_bias = qwen2 or c.get("attention_bias", False)
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=not qwen2 and c.get("attention_bias", False))

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        split = lambda y, heads: y.view(b, t, heads, self.head_dim).transpose(1, 2)
        q = rotate(split(self.q_proj(x), self.heads), cos, sin)
        k = rotate(split(self.k_proj(x), self.kv_heads), cos, sin)
        v = split(self.v_proj(x), self.kv_heads)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(attended.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, ffn = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        eps = c.get("rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(c["hidden_size"], eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], eps)
        self.mlp = MLP(c)

    def forward(self, h, cos, sin):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class Backbone(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c.get("rms_norm_eps", 1e-6))


class CausalLM(nn.Module):
    """Module names follow transformers', so model.safetensors loads as it is."""

    def __init__(self, c):
        super().__init__()
        self.model = Backbone(c)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        self.tied = c.get("tie_word_embeddings", False)
        self.theta = c.get("rope_theta", 10000.0)
        self.recompute = False

    def forward(self, ids):
        cos, sin = (table.to(ids.device) for table in rotary_tables(ids.shape[1], self.model.layers[0].self_attn.head_dim, self.theta))
        h = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            if self.recompute and torch.is_grad_enabled():
                # Activation recomputation, as the trainer's gradientCheckpointing does it: each
                # layer keeps only its input and runs again in the backward pass.
                h = torch.utils.checkpoint.checkpoint(layer, h, cos, sin, use_reentrant=False)
            else:
                h = layer(h, cos, sin)
        return self.lm_head(self.model.norm(h))


def load_model(folder):
    with open(os.path.join(folder, "config.json")) as f:
        c = json.load(f)
    # Built without memory, then given the file's tensors: no random initialisation of 0.5B weights.
    with torch.device("meta"):
        model = CausalLM(c)
    state = load_file(os.path.join(folder, "model.safetensors"))
    state = {name: state[name].float() for name in list(state)}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if model.tied:
        model.lm_head.weight = model.model.embed_tokens.weight
        missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"{folder}/model.safetensors: missing {missing}, unexpected {unexpected}")
    return model


def bench_token_ids(count, vocab_size):
    """The same ids as benchTokenIds in bench/configs.ts: glibc's 31-bit LCG modulo the vocabulary."""
    ids, state = [], 0
    for _ in range(count):
        state = (1103515245 * state + 12345) % 2**31
        ids.append(state % vocab_size)
    return ids


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(args):
    s = json.loads(args.settings)
    torch.manual_seed(s["seed"])
    started = time.perf_counter()
    model = load_model(args.model)
    model.recompute = bool(s.get("recompute", False))
    load_seconds = time.perf_counter() - started
    rss_after_load = peak_rss_mib()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    lora = s["lora"]
    for layer in model.model.layers:
        for target in lora["targetModules"]:
            holder = layer.self_attn if hasattr(layer.self_attn, target) else layer.mlp
            setattr(holder, target, LoraLinear(getattr(holder, target), lora["r"], lora["alpha"]))
    model.to(args.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    vocab = model.lm_head.out_features
    batch, seq = s["batchSize"], s["seqLength"]
    ids = torch.tensor(bench_token_ids(batch * seq, vocab)).view(batch, seq).to(args.device)

    def step():
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    first_started = time.perf_counter()
    first_loss = step()
    first_seconds = time.perf_counter() - first_started
    for _ in range(args.warmup - 1):
        step()
    tokens = batch * seq * args.steps
    runs = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        runs.append(tokens / (time.perf_counter() - started))
    median = statistics.median(runs)
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tokensPerSecond": median,
        "runs": runs,
        "stepSeconds": batch * seq / median,
        "firstStepSeconds": first_seconds,
        "firstStepLoss": first_loss,
        "loadSeconds": load_seconds,
        "trainableParameters": sum(p.numel() for p in trainable),
        "peakRssMiB": round(peak_rss_mib()),
        **gpu_figures(args.device),
        "rssAfterLoadMiB": round(rss_after_load),
        "protocol": {"warmup": args.warmup, "steps": args.steps, "repeats": args.repeats},
    }


def gpu_figures(device):
    if device != "cuda":
        return {}
    return {"gpu": torch.cuda.get_device_name(), "peakGpuMemoryMiB": round(torch.cuda.max_memory_allocated() / 2**20)}


def matmul(args):
    n = args.size
    generator = torch.Generator().manual_seed(0)
    a = (torch.rand(n, n, generator=generator) * 2 - 1).to(args.device)
    b = (torch.rand(n, n, generator=generator) * 2 - 1).to(args.device)
    # On a GPU the product is queued; synchronising times its computation, not its launch.
    wait = torch.cuda.synchronize if args.device == "cuda" else lambda: None
    a @ b
    wait()
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        a @ b
        wait()
        seconds.append(time.perf_counter() - started)
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": n,
        "gflops": 2 * n**3 / min(seconds) / 1e9,
        "seconds": seconds,
        **gpu_figures(args.device),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["train", "matmul"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", help="train: the model folder (config.json, model.safetensors)")
    parser.add_argument("--settings", help="train: batchSize, seqLength, lora {r, alpha, targetModules}, seed as JSON")
    parser.add_argument("--warmup", type=int, default=2, help="train: untimed steps, the first of which gives firstStepLoss")
    parser.add_argument("--steps", type=int, default=5, help="train: steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="train: timed runs (the median counts); matmul: products (the fastest counts)")
    parser.add_argument("--size", type=int, default=2048, help="matmul: the matrices' size")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.task == "train" and (args.model is None or args.settings is None):
        parser.error("train needs --model and --settings")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda, but torch {torch.__version__} sees no usable GPU (torch.cuda.is_available() is False)")
    print(json.dumps(train(args) if args.task == "train" else matmul(args)))


if __name__ == "__main__":
    main()
