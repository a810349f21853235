"""Hugging Face PEFT references for the trainer's prompt-learning methods (prefix and prompt tuning).

Two modes, both run with the Hugging Face venv
(`bash scripts/python-env.sh --check scripts/python-requirements.txt scripts/python-requirements-hf.txt`):

  make-prompt-fixtures.py [OUT_ROOT]
      Writes golden fixtures under OUT_ROOT (default tests/fixtures/hf/methods): for each case a tiny
      random model folder built from a config (no downloads), a PEFT adapter with fixed weights saved by
      PeftModel.save_pretrained, and expected.json with the input ids, mask and PEFT's logits for the
      input's own positions. trainer/methods/{prefix,prompt}/*.test.ts load the same model and adapter
      and compare. Also prompt/text-init/expected.json: the prompt PEFT's TEXT init builds from the
      quickstart model's tokenizer and embeddings, for a text shorter and one longer than the prompt.

  make-prompt-fixtures.py --check-export MODEL_DIR ADAPTER_DIR INPUTS_JSON
      Loads an adapter the trainer exported into PEFT (PeftModel.from_pretrained), fails on any missing
      or unexpected key, and prints one JSON object: the adapter's keys, PEFT's logits for the inputs'
      own positions, and the mean next-token loss over the labels when INPUTS_JSON has them.

Everything is float32 on the CPU, deterministic from fixed seeds.
"""

import json
import os
import sys
import warnings

import torch
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

# The trainer's tiny test shapes (trainer/testing/tiny-models.ts): a grouped-query Llama and a GPT-2.
LLAMA = dict(
    vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128,
    tie_word_embeddings=False, hidden_act="silu",
)
GPT2 = dict(vocab_size=53, n_embd=24, n_layer=2, n_head=3, n_positions=32, n_inner=None, layer_norm_epsilon=1e-5,
            activation_function="gelu_new")

IDS = [[3, 16, 29, 42, 55, 7], [10, 23, 36, 49, 1, 14]]
MASK = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]


def tiny_model(family, seed):
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**LLAMA))
    else:
        model = GPT2LMHeadModel(GPT2Config(**GPT2))
    # Weights of a trained model's size rather than init's 0.02, so that the prefix matters.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "ln_" in name:
                parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
            else:
                parameter.copy_(0.2 * torch.randn_like(parameter))
    return model.eval()


def ids_for(family):
    vocab = (LLAMA if family == "llama" else GPT2)["vocab_size"]
    return [[i % vocab for i in row] for row in IDS]


def save_model(model, folder):
    os.makedirs(folder, exist_ok=True)
    model.config.to_json_file(os.path.join(folder, "config.json"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" or not model.config.tie_word_embeddings},
              os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def real_logits(peft_model, ids, mask, virtual_tokens):
    with torch.no_grad():
        out = peft_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    logits = out.logits
    # Prompt tuning returns logits for the virtual tokens too; prefix tuning does not.
    if logits.shape[1] == len(ids[0]) + virtual_tokens:
        logits = logits[:, virtual_tokens:]
    return logits


def write_case(folder, family, peft_model, virtual_tokens, extra=None):
    ids = ids_for(family)
    logits = real_logits(peft_model, ids, MASK, virtual_tokens)
    with torch.no_grad():
        base = peft_model.get_base_model()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(MASK)).logits
    peft_model.save_pretrained(os.path.join(folder, "adapter"))
    # The model card PEFT writes beside the adapter says nothing a test reads.
    os.remove(os.path.join(folder, "adapter", "README.md"))
    expected = {
        "ids": ids,
        "mask": MASK,
        "shape": list(logits.shape),
        "logits": [round(float(v), 7) for v in logits.flatten()],
        # How far the adapter moves the logits, so a test can tell a no-op adapter from a match.
        "maxBaseDifference": float((logits - base).abs().max()),
        **(extra or {}),
    }
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(expected, f)


def make_prefix(root):
    for family, projection in (("llama", False), ("llama", True), ("gpt2", False)):
        name = family + ("-projection" if projection else "")
        folder = os.path.join(root, "prefix", name)
        model = tiny_model(family, seed=11 if family == "llama" else 12)
        save_model(model, os.path.join(folder, "model"))
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=projection,
                                    **({"encoder_hidden_size": 20} if projection else {}))
        peft_model = get_peft_model(model, config).eval()
        encoder = peft_model.prompt_encoder["default"]
        torch.manual_seed(21)
        with torch.no_grad():
            for parameter in encoder.parameters():
                parameter.copy_(torch.randn_like(parameter) * (0.5 if projection else 1.0))
        extra = {}
        if projection:
            # The MLP's weights, which the saved adapter leaves out, for the trainer to start from.
            weights = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
            save_file(weights, os.path.join(folder, "encoder.safetensors"), metadata={"format": "pt"})
            extra["encoderHiddenSize"] = 20
        write_case(folder, family, peft_model, 3, extra)


def make_prompt(root):
    for family in ("llama", "gpt2"):
        folder = os.path.join(root, "prompt", family)
        model = tiny_model(family, seed=13 if family == "llama" else 14)
        save_model(model, os.path.join(folder, "model"))
        peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
        torch.manual_seed(22)
        with torch.no_grad():
            for parameter in peft_model.prompt_encoder["default"].parameters():
                parameter.copy_(torch.randn_like(parameter) * 0.5)
        write_case(folder, family, peft_model, 4)

    # TEXT init on the quickstart model (it has a tokenizer): PEFT tokenizes the text with special tokens
    # and repeats or cuts the ids to num_virtual_tokens.
    quickstart = os.path.join("examples", "quickstart", "model")
    base = AutoModelForCausalLM.from_pretrained(quickstart)
    cases = []
    for text, tokens in (("Answer the question in one short sentence.", 20), ("Question: the opposite of hot", 3)):
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=tokens, prompt_tuning_init="TEXT",
                                    prompt_tuning_init_text=text, tokenizer_name_or_path=quickstart)
        peft_model = get_peft_model(base, config)
        embeddings = peft_model.prompt_encoder["default"].embedding.weight.detach()
        cases.append({"initText": text, "numVirtualTokens": tokens, "shape": list(embeddings.shape),
                      "promptEmbeddings": [round(float(v), 8) for v in embeddings.flatten()]})
        base = peft_model.unload() if hasattr(peft_model, "unload") else peft_model.get_base_model()
    os.makedirs(os.path.join(root, "prompt", "text-init"), exist_ok=True)
    with open(os.path.join(root, "prompt", "text-init", "expected.json"), "w") as f:
        json.dump({"model": quickstart, "cases": cases}, f)


def check_export(model_dir, adapter_dir, inputs_path):
    with open(inputs_path) as f:
        inputs = json.load(f)
    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    expected = set(get_peft_model_state_dict(peft_model).keys())
    missing = sorted(expected - set(saved))
    unexpected = sorted(set(saved) - expected)
    if missing or unexpected:
        print(json.dumps({"error": "keys differ", "missing": missing, "unexpected": unexpected}))
        sys.exit(1)
    config = peft_model.active_peft_config
    ids, mask = inputs["ids"], inputs["mask"]
    logits = real_logits(peft_model, ids, mask, config.num_virtual_tokens)
    result = {"keys": sorted(saved), "peftType": str(config.peft_type.value), "shape": list(logits.shape),
              "logits": [float(v) for v in logits.flatten()]}
    if "labels" in inputs:
        labels = torch.tensor(inputs["labels"])
        with torch.no_grad():
            out = peft_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=labels)
        result["loss"] = float(out.loss)
    print(json.dumps(result))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--check-export":
        check_export(*sys.argv[2:5])
        return
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "fixtures", "hf", "methods")
    torch.set_num_threads(1)
    make_prefix(root)
    make_prompt(root)
    print(f"wrote fixtures under {root}", file=sys.stderr)


if __name__ == "__main__":
    main()
