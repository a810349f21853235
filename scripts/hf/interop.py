"""The Python half of `npm run test:interop` (scripts/hf/interop.ts runs it; see there).

    interop.py --base MODEL_DIR --output JOB_OUTPUT_DIR --eval EVAL_JSON [--merged DIR ...]

Loads the base model folder in transformers and the job's output by its kind (a PEFT adapter
with PeftModel.from_pretrained on that base; a whole model with transformers), reports missing
and unexpected keys, and computes each model's mean next-token loss over the eval batches (the
trainer's own batches of token ids, attention masks and labels, so tokenization and loss mask are the
same): the sum of cross-entropies over labelled targets divided by their count, as the
trainer's evaluate() does. Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def eval_loss(model, batches: list[dict]) -> tuple[float, int]:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            ids = torch.tensor(batch["inputIds"], dtype=torch.long)
            mask = torch.tensor(batch["attentionMask"], dtype=torch.long)
            labels = torch.tensor(batch["labels"], dtype=torch.long)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            # Prompt tuning puts its virtual tokens before the input; the input's logits are the last ones.
            logits = logits[:, -ids.shape[1] :, :]
            shifted, targets = logits[:, :-1, :], labels[:, 1:]
            losses = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
            total += losses.item()
            count += int((targets != IGNORE_INDEX).sum())
    return total / count, count


def load_causal_lm(folder: str):
    """A model folder as AutoModelForCausalLM loads it, with what did not fit."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    return model, {
        "missingKeys": sorted(info.get("missing_keys", [])),
        "unexpectedKeys": sorted(info.get("unexpected_keys", [])),
        "mismatchedKeys": sorted(str(entry[0]) if isinstance(entry, (tuple, list)) else str(entry) for entry in info.get("mismatched_keys", [])),
    }


def load_peft(base, output: str, config: dict):
    """
    The adapter as a user loads it (PeftModel.from_pretrained), then its file against what PEFT
    itself would save for this config: keys PEFT expects but the file lacks are missing, keys
    the file has that PEFT does not expect are unexpected, and every loaded value must equal
    the file's.
    """
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, output, is_trainable=False)
    saved = load_file(os.path.join(output, "adapter_model.safetensors"))
    expected = get_peft_model_state_dict(model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    mismatched = sorted(
        key for key in set(saved) & set(expected) if saved[key].shape != expected[key].shape or not torch.equal(saved[key].float(), expected[key].float())
    )
    # PEFT warns rather than fails on keys that do not fit; such a warning is a failure here.
    for warning in caught:
        text = str(warning.message)
        if "missing adapter keys" in text.lower() or "unexpected" in text.lower():
            unexpected.append(f"PEFT warning: {text[:200]}")
    return model, {"peftType": config.get("peft_type"), "missingKeys": missing, "unexpectedKeys": unexpected, "valueMismatches": mismatched}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--merged", action="append", default=[])
    args = parser.parse_args()
    torch.manual_seed(0)
    with open(args.eval, encoding="utf-8") as file:
        rows = json.load(file)["batches"]

    base, base_keys = load_causal_lm(args.base)
    base_loss, tokens = eval_loss(base, rows)
    report: dict = {"baseModel": {**base_keys, "evalLoss": base_loss}, "evalTokens": tokens, "merged": []}

    adapter_config_file = os.path.join(args.output, "adapter_config.json")
    if os.path.exists(adapter_config_file):
        from peft import PeftType

        with open(adapter_config_file, encoding="utf-8") as file:
            config = json.load(file)
        peft_type = config.get("peft_type")
        if peft_type not in {member.value for member in PeftType}:
            report["output"] = {"kind": "skipped", "reason": f"PEFT {__import__('peft').__version__} has no peft_type {peft_type!r}; it cannot load this adapter"}
        else:
            model, keys = load_peft(base, args.output, config)
            loss, _ = eval_loss(model, rows)
            report["output"] = {"kind": "peft", **keys, "evalLoss": loss}
    elif os.path.exists(os.path.join(args.output, "config.json")):
        model, keys = load_causal_lm(args.output)
        loss, _ = eval_loss(model, rows)
        report["output"] = {"kind": "full", **keys, "evalLoss": loss}
    else:
        report["output"] = {"kind": "skipped", "reason": f"{args.output} has neither adapter_config.json nor config.json"}

    for folder in args.merged:
        model, keys = load_causal_lm(folder)
        loss, _ = eval_loss(model, rows)
        report["merged"].append({"folder": folder, "files": sorted(os.listdir(folder)), **keys, "evalLoss": loss})

    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
