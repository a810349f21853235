"""Writes tests/fixtures/hf/dpo/expected.json: TRL's sigmoid DPO loss and its gradients,
computed with PyTorch and PEFT, for trainer/objectives/dpo-hf.test.ts.

It reuses the DoRA fixture's tiny Llama and adapter (tests/fixtures/hf/methods/dora/llama,
made by make-method-fixtures.py), so the adapter is a PEFT one with trained-looking weights.
Two preference pairs of token ids (the prompt's labels -100, right padding), then:

  policy logps      the adapter's model, summed log-probabilities of each completion
  reference logps   the same model inside peft_model.disable_adapter(), without gradient
  loss              mean over pairs of -(1-ls) logsigmoid(beta m) - ls logsigmoid(-beta m),
                    m = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected),
                    as TRL's DPOTrainer computes it for loss_type "sigmoid"
  gradients         d loss / d every adapter weight, under the names (and layouts) of
                    adapter_model.safetensors

It also writes tests/fixtures/hf/dpo/full/: DPO for full fine-tuning as TRL computes it with
precompute_ref_log_probs=True. The reference log-probabilities come from the initial model (the
fixture's base Llama, no gradient), computed before training; the policy is a model whose
weights have moved (the DoRA adapter merged into them, saved as full/model), and the gradients
are of every one of its weights, under their Hugging Face names and layouts.

Run with the Hugging Face venv:
  "$(bash scripts/python-env.sh --check scripts/python-requirements.txt scripts/python-requirements-hf.txt)" \
      scripts/hf/make-dpo-fixture.py
"""

import json
import pathlib

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AutoModelForCausalLM

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hf"
SOURCE = FIXTURES / "methods" / "dora" / "llama"
OUT = FIXTURES / "dpo" / "expected.json"
FULL = FIXTURES / "dpo" / "full"
IGNORE_INDEX = -100
BETA = 0.5
LABEL_SMOOTHING = 0.2

# Rows: chosen 0, chosen 1, rejected 0, rejected 1; the first three tokens of each pair are its prompt.
IDS = [
    [5, 17, 33, 8, 41, 12, 29, 2],
    [9, 44, 21, 30, 6, 0, 0, 0],
    [5, 17, 33, 50, 3, 27, 0, 0],
    [9, 44, 21, 14, 38, 55, 19, 0],
]
LENGTHS = [8, 5, 6, 7]
MASK = [[1 if t < length else 0 for t in range(8)] for length in LENGTHS]
LABELS = [[ids[t] if 3 <= t < length else IGNORE_INDEX for t in range(8)] for ids, length in zip(IDS, LENGTHS)]


def completion_logps(model) -> torch.Tensor:
    logits = model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits
    labels = torch.tensor(LABELS)[:, 1:]
    logps = torch.log_softmax(logits[:, :-1, :], dim=-1)
    mask = labels != IGNORE_INDEX
    picked = torch.gather(logps, 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def main() -> None:
    base = AutoModelForCausalLM.from_pretrained(SOURCE / "model", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, SOURCE / "adapter", is_trainable=True)
    model.train()  # lora_dropout is 0: train mode changes nothing but requires_grad
    with torch.no_grad(), model.disable_adapter():
        reference = completion_logps(model)
    policy = completion_logps(model)
    ratios = policy - reference
    margins = BETA * (ratios[:2] - ratios[2:])
    losses = -(1 - LABEL_SMOOTHING) * F.logsigmoid(margins) - LABEL_SMOOTHING * F.logsigmoid(-margins)
    loss = losses.mean()
    loss.backward()
    gradients = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            saved = name.replace(".default", "")
            gradients[saved] = {"shape": list(parameter.shape), "data": parameter.grad.reshape(-1).tolist()}
    record = {
        "beta": BETA,
        "labelSmoothing": LABEL_SMOOTHING,
        "ids": IDS,
        "mask": MASK,
        "labels": LABELS,
        "policyLogps": policy.tolist(),
        "referenceLogps": reference.tolist(),
        "loss": loss.item(),
        "gradients": gradients,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record) + "\n")
    print(f"wrote {OUT}: loss {loss.item():.6f}, {len(gradients)} gradients")
    full()


def full() -> None:
    initial = AutoModelForCausalLM.from_pretrained(SOURCE / "model", dtype=torch.float32)
    initial.eval()
    # TRL's precompute_ref_log_probs: one pass of the initial model before the first step.
    with torch.no_grad():
        reference = completion_logps(initial)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(SOURCE / "model", dtype=torch.float32), SOURCE / "adapter").merge_and_unload()
    merged.save_pretrained(FULL / "model")
    (FULL / "model" / "generation_config.json").unlink(missing_ok=True)  # the trainer reads config.json and the weights only
    merged.train()  # the config's dropouts are 0: train mode changes nothing
    for parameter in merged.parameters():
        parameter.requires_grad_(True)
    policy = completion_logps(merged)
    ratios = policy - reference
    margins = BETA * (ratios[:2] - ratios[2:])
    losses = -(1 - LABEL_SMOOTHING) * F.logsigmoid(margins) - LABEL_SMOOTHING * F.logsigmoid(-margins)
    loss = losses.mean()
    loss.backward()
    gradients = {name: {"shape": list(parameter.shape), "data": parameter.grad.reshape(-1).tolist()} for name, parameter in merged.named_parameters()}
    record = {
        "beta": BETA,
        "labelSmoothing": LABEL_SMOOTHING,
        "ids": IDS,
        "mask": MASK,
        "labels": LABELS,
        "policyLogps": policy.tolist(),
        "referenceLogps": reference.tolist(),
        "loss": loss.item(),
        "gradients": gradients,
    }
    (FULL / "expected.json").write_text(json.dumps(record) + "\n")
    print(f"wrote {FULL}: loss {loss.item():.6f}, {len(gradients)} gradients")


if __name__ == "__main__":
    main()
