"""Golden model fixtures: what transformers and PEFT compute, for the trainer's tests to match.

For every architecture the trainer accepts, and the quirks each has, this builds a tiny model
with random weights from a config (fixed seeds), saves it with `save_pretrained`, and records
transformers' logits and loss for fixed inputs (one row right-padded). For a few of them it also
saves a PEFT LoRA adapter with fixed non-zero weights and PEFT's logits. The trainer's tests
(trainer/model/hf-golden.test.ts) read these files only, so CI needs no Python.

Run it with the Hugging Face venv (scripts/python-env.sh):
    python=$(bash scripts/python-env.sh --check scripts/python-requirements.txt scripts/python-requirements-hf.txt)
    "$python" scripts/hf/make-model-fixtures.py [OUT_DIR]
OUT_DIR defaults to tests/fixtures/hf/models. Everything is seeded, so a rerun with the same
package versions writes the same files (the versions are recorded in each expected.json).

What is stored, per model folder <name>/:
  config.json, model.safetensors   the model as save_pretrained writes it (weights BF16: half
                                   the size, and exact in float32; the logits were computed from
                                   these rounded values in float32)
  expected.json                    input_ids, attention_mask, labels, transformers' loss, versions
  logits.safetensors               "logits" [batch, seq, vocab] float32 (eval mode, eager
                                   attention), and "lora_logits" where there is an adapter
  adapter/                         PEFT's adapter_config.json and adapter_model.safetensors
"""

import copy
import json
import os
import sys
import zlib

# PEFT writes target_modules from a Python set, whose order follows string hashing: a fixed
# hash seed (set before the interpreter starts, hence the re-exec) makes reruns write the same files.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
# Nothing is downloaded: PEFT would otherwise look base_model_name_or_path up on the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import safetensors.torch
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 96
SEQ = 8
# Right padding in the second row: its last two positions are padding.
ATTENTION_MASK = [[1] * SEQ, [1] * 6 + [0] * 2]

# Small but not degenerate: 4 query heads over 2 key/value heads where the architecture allows.
LLAMA_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
)


def configs():
    """Name -> (config, LoRA settings or None). Each quirk the trainer implements has a model."""
    return {
        "llama-gqa": (
            LlamaConfig(**LLAMA_LIKE, tie_word_embeddings=False),
            # PEFT's default targets for llama (q_proj, v_proj).
            dict(target_modules=None),
        ),
        "llama-tied": (LlamaConfig(**{**LLAMA_LIKE, "num_key_value_heads": 4}, tie_word_embeddings=True), None),
        "llama3-rope": (
            LlamaConfig(
                **LLAMA_LIKE,
                # Wavelengths of an 8-wide head span all three llama3 bands at this context.
                rope_theta=10000.0,
                rope_scaling=dict(
                    rope_type="llama3",
                    factor=4.0,
                    low_freq_factor=1.0,
                    high_freq_factor=4.0,
                    original_max_position_embeddings=64,
                ),
                attention_bias=True,
                mlp_bias=True,
            ),
            None,
        ),
        "qwen2": (Qwen2Config(**LLAMA_LIKE, tie_word_embeddings=True, use_sliding_window=False), None),
        "qwen3": (
            # head_dim is set apart from hidden_size / heads, as Qwen3 checkpoints do.
            Qwen3Config(**LLAMA_LIKE, head_dim=16, tie_word_embeddings=True, use_sliding_window=False),
            dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        ),
        "mistral": (
            # A window shorter than the inputs, so the sliding-window mask is exercised.
            MistralConfig(**LLAMA_LIKE, sliding_window=4, tie_word_embeddings=False),
            None,
        ),
        "gemma3-text": (
            Gemma3TextConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                max_position_embeddings=128,
                rms_norm_eps=1e-6,
                # Not head_dim, so a model that scales by head_dim ** -0.5 is caught.
                query_pre_attn_scalar=24,
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                },
                tie_word_embeddings=True,
            ),
            dict(target_modules=None),
        ),
        "phi3": (
            Phi3Config(**LLAMA_LIKE, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2),
            # PEFT has no default for phi3; the fused modules are what users target.
            dict(target_modules=["qkv_proj", "gate_up_proj"]),
        ),
        "phi3-partial-rotary": (
            # Phi-4-mini's quirk: rotary embeddings on the first half of each head only.
            Phi3Config(
                **LLAMA_LIKE,
                tie_word_embeddings=True,
                partial_rotary_factor=0.5,
                sliding_window=5,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            ),
            None,
        ),
        # Phi-3.5 / Phi-4-mini's LongRoPE: the inputs (8 positions) go past the original context
        # (4), so the long factors apply, and cos and sin are scaled by the attention factor.
        "phi3-longrope": (
            Phi3Config(
                **{**LLAMA_LIKE, "max_position_embeddings": 64},
                original_max_position_embeddings=4,
                rope_scaling=dict(type="longrope", short_factor=[1.0, 1.2, 1.5, 2.0], long_factor=[1.0, 2.5, 4.0, 8.0]),
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            ),
            None,
        ),
        # The same within the original context (16): the short factors.
        "phi3-longrope-short": (
            Phi3Config(
                **{**LLAMA_LIKE, "max_position_embeddings": 64},
                original_max_position_embeddings=16,
                rope_scaling=dict(type="longrope", short_factor=[1.0, 1.2, 1.5, 2.0], long_factor=[1.0, 2.5, 4.0, 8.0]),
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            ),
            None,
        ),
        "gpt2": (
            GPT2Config(
                vocab_size=VOCAB,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=32,
                n_inner=None,
                activation_function="gelu_new",
                bos_token_id=VOCAB - 1,
                eos_token_id=VOCAB - 1,
            ),
            # PEFT's default for gpt2 (c_attn, a Conv1D: fan_in_fan_out).
            dict(target_modules=None),
        ),
    }


def randomize(model, seed):
    """Weights that keep activations of order one (transformers' std 0.02 makes logits nearly flat).

    Every value is rounded to bfloat16 and kept in float32, so the BF16 file holds exactly the
    weights the logits were computed with.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            shape = parameter.shape
            if name.endswith("bias"):
                value = (torch.rand(shape, generator=generator) - 0.5) * 0.2
            elif parameter.dim() == 1:
                # Norm weights: near 1 (Gemma's (1 + w) norms then scale by about 2).
                value = 1 + (torch.rand(shape, generator=generator) - 0.5) * 0.4
            else:
                # GPT-2's Conv1D weights are [in, out], nn.Linear's and embeddings' [out, in].
                fan_in = shape[0] if ".c_" in name else shape[1]
                value = torch.randn(shape, generator=generator) / fan_in**0.5
            parameter.copy_(value.to(torch.bfloat16).to(torch.float32))


def inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (2, SEQ), generator=generator)
    attention_mask = torch.tensor(ATTENTION_MASK)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return input_ids, attention_mask, labels


def set_lora_weights(model, seed):
    """Fixed non-zero A and B for every LoRA module (PEFT starts B at zero, which tests nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                parameter.copy_((torch.rand(parameter.shape, generator=generator) - 0.5) * 0.5)


def make(name, config, lora, out_dir, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    randomize(model, seed)
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    # The name PEFT records as base_model_name_or_path (it reads the model's name_or_path attribute).
    model.name_or_path = f"kubetune-fixtures/{name}"
    # Saved from a copy: casting the model itself would also round its rotary buffers (inv_freq).
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(folder)

    input_ids, attention_mask, labels = inputs(seed)
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    tensors = {"logits": output.logits.contiguous()}
    expected = {
        "architecture": config.architectures[0] if config.architectures else type(model).__name__,
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "labels": labels.tolist(),
        "loss": output.loss.item(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }

    if lora is not None:
        lora_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM", **lora)
        peft_model = get_peft_model(model, lora_config)
        set_lora_weights(peft_model, seed + 1)
        peft_model.eval()
        with torch.no_grad():
            lora_output = peft_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        tensors["lora_logits"] = lora_output.logits.contiguous()
        expected["lora_loss"] = lora_output.loss.item()
        peft_model.save_pretrained(os.path.join(folder, "adapter"))

    safetensors.torch.save_file(tensors, os.path.join(folder, "logits.safetensors"))
    with open(os.path.join(folder, "expected.json"), "w") as file:
        json.dump(expected, file, separators=(", ", ": "))
        file.write("\n")
    print(f"{name}: loss {expected['loss']:.6f}" + (f", LoRA loss {expected['lora_loss']:.6f}" if lora else ""))


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "fixtures", "hf", "models")
    torch.use_deterministic_algorithms(True)
    for name, (config, lora) in configs().items():
        # Seeded by name, so adding a model leaves the others' files as they were.
        make(name, config, lora, out_dir, seed=zlib.crc32(name.encode()) % 100_000)


if __name__ == "__main__":
    main()
