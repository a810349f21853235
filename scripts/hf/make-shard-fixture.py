"""Writes tests/fixtures/hf/shards/: how transformers shards a model (issue 9, defect 4).

    "$PY" scripts/hf/make-shard-fixture.py

A tiny random Llama (untied embeddings, float32) saved with save_pretrained(max_shard_size=...)
at a size that makes several shards, one tensor larger than a shard included. Kept: the
tensors' names and shapes in the state dict's order (what the sharding sees), the shard files'
names, and model.safetensors.index.json byte for byte. trainer/output/shards.test.ts shards the
same tensors with the trainer's code and compares; the weights themselves are not kept.
"""

import json
import os
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "hf", "shards")
MAX_SHARD_SIZE = "20KB"


def main() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.float32)
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, max_shard_size=MAX_SHARD_SIZE)
        files = sorted(name for name in os.listdir(folder) if name.endswith(".safetensors"))
        with open(os.path.join(folder, "model.safetensors.index.json"), encoding="utf-8") as file:
            index = file.read()
    tensors = [{"name": name, "shape": list(tensor.shape)} for name, tensor in model.state_dict().items()]
    with open(os.path.join(OUT, "model.safetensors.index.json"), "w", encoding="utf-8") as file:
        file.write(index)
    with open(os.path.join(OUT, "tensors.json"), "w", encoding="utf-8") as file:
        json.dump({"maxShardSize": MAX_SHARD_SIZE, "files": files, "tensors": tensors}, file, indent=1)
        file.write("\n")
    print(f"{len(files)} shards, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
