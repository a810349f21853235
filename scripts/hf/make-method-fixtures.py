"""Writes the Hugging Face PEFT fixtures of the DoRA and IA3 tests (tests/fixtures/hf/methods/).

For each method and each model family (a tiny Llama and a tiny GPT-2, built from configs with
seeded random weights: nothing is downloaded) it writes, under tests/fixtures/hf/methods/<method>/<family>/:

  model/config.json, model/model.safetensors   the base model, float32
  adapter/adapter_config.json,                 the adapter as PEFT's save_pretrained writes it,
  adapter/adapter_model.safetensors            with trained-looking (random, non-initial) weights
  logits.json                                  ids, mask, and PEFT's logits with the adapter,
                                               without it, and after merge_and_unload()

The trainer's tests load the adapter into kubetune's method, compare the logits, and compare
kubetune's own export with PEFT's (same tensor names and shapes, same config keys).

Run with the Hugging Face venv:
  "$(bash scripts/python-env.sh --check scripts/python-requirements.txt scripts/python-requirements-hf.txt)" \
      scripts/hf/make-method-fixtures.py
"""

import json
import pathlib
import shutil
import tempfile

import torch
from peft import IA3Config, LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hf" / "methods"

# The shapes of trainer/testing/tiny-models.ts (TINY_LLAMA, TINY_GPT2).
LLAMA = dict(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    hidden_act="silu",
)
GPT2 = dict(vocab_size=53, n_embd=24, n_layer=2, n_head=3, n_positions=32, n_inner=None, layer_norm_epsilon=1e-5, activation_function="gelu_new")

IDS = [[3, 16, 29, 42, 2, 15], [10, 23, 36, 49, 9, 22]]
MASK = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]

# Per method and family: the PEFT config. Targets include a module with a bias (GPT-2) and,
# for IA3, a feed-forward module, so every branch of the layers is compared.
CASES = {
    "dora": {
        "llama": lambda: LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True, task_type="CAUSAL_LM"),
        "gpt2": lambda: LoraConfig(r=2, lora_alpha=6, target_modules=["c_attn", "c_fc"], use_dora=True, fan_in_fan_out=True, task_type="CAUSAL_LM"),
    },
    "ia3": {
        # PEFT's defaults for both (target_modules and feedforward_modules unset).
        "llama": lambda: IA3Config(task_type="CAUSAL_LM"),
        "gpt2": lambda: IA3Config(task_type="CAUSAL_LM", fan_in_fan_out=True),
    },
}


def base_model(family: str, seed: int):
    torch.manual_seed(seed)
    config = LlamaConfig(**LLAMA) if family == "llama" else GPT2Config(**GPT2)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:
                # Norm scales near 1 and small biases, as tiny-models.ts draws them.
                parameter.copy_((1.0 if "norm" in name or "ln_" in name and name.endswith("weight") else 0.0) + 0.2 * (torch.rand_like(parameter) - 0.5))
            else:
                fan_in = parameter.shape[0] if family == "gpt2" and "wte" not in name and "wpe" not in name else parameter.shape[-1]
                parameter.copy_((torch.rand_like(parameter) * 2 - 1) * (3.0 / fan_in) ** 0.5)
    return model.eval()


def logits(model) -> list:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits
    return out.reshape(-1).tolist()


def train_looking(peft_model, seed: int) -> None:
    """Moves every adapter weight away from its initial value, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if not parameter.requires_grad:
                continue
            noise = torch.rand(parameter.shape, generator=generator) - 0.5
            if "lora_B" in name:
                parameter.copy_(noise)
            elif "lora_magnitude_vector" in name or "ia3_l" in name:
                parameter.mul_(1 + 0.6 * noise)


def main() -> None:
    for method, families in CASES.items():
        for index, (family, make_config) in enumerate(families.items()):
            folder = ROOT / method / family
            shutil.rmtree(folder, ignore_errors=True)
            model = base_model(family, seed=100 + index)
            model.save_pretrained(folder / "model", safe_serialization=True)
            base_logits = logits(model)
            peft_model = get_peft_model(model, make_config())
            train_looking(peft_model, seed=200 + index)
            peft_model.eval()
            adapter_logits = logits(peft_model)
            with tempfile.TemporaryDirectory() as scratch:
                peft_model.save_pretrained(scratch)
                (folder / "adapter").mkdir(parents=True)
                for name in ("adapter_config.json", "adapter_model.safetensors"):
                    shutil.copy(pathlib.Path(scratch) / name, folder / "adapter" / name)
            merged_logits = logits(peft_model.merge_and_unload())
            (folder / "model" / "generation_config.json").unlink(missing_ok=True)
            record = {"ids": IDS, "mask": MASK, "base": base_logits, "adapter": adapter_logits, "merged": merged_logits}
            (folder / "logits.json").write_text(json.dumps(record) + "\n")
            print(f"{method}/{family}: wrote {folder}")


if __name__ == "__main__":
    main()
