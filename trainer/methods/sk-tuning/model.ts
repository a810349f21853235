import type { CausalLM } from "../../model/model.ts";
import type { Tokenizer } from "../../tokenizer/tokenizer.ts";
import { MethodOptionsError, type Adapter, type InjectContext, type PeftMethod } from "../method.ts";
import { prefixGeometry } from "../prefix/config.ts";
import { PrefixAdapter, prefixTuningConfig } from "../prefix/model.ts";
import { frozenEmbeddings, PROMPT_EMBEDDING_NAME, PromptAdapter, promptTuningConfig } from "../prompt/model.ts";
import { EmbeddingTable } from "../prompt/virtual-tokens.ts";
import { resolveSkTuningConfig } from "./config.ts";
import { ProjectedPrefixKeyValues, ProjectedPromptTable } from "./layer.ts";
import { descriptionKeyValues } from "./semantic.ts";
import { meaningfulText } from "./words.ts";

/**
 * SK-tuning (semantic knowledge tuning, Prottasha et al., Scientific Reports 2024) for causal
 * language models. The task description's meaningful words are tokenized; their tokens are the
 * virtual tokens, so the prefix length is their count, and they start from what the frozen model
 * makes of them:
 *   prompt variant: their frozen word embeddings, prepended to the input embeddings;
 *   prefix variant: the keys and values every layer of the frozen model computes for them.
 * Either way the step-0 model reads the input as if the meaningful words were written before it,
 * and training moves on from there (the tokens themselves, or with projection a small linear map
 * on them). The result is a plain PEFT prompt-tuning or prefix-tuning adapter.
 */
export const skTuningMethod: PeftMethod = {
  type: "skTuning",
  inject(model: CausalLM, options: unknown, context: InjectContext): Adapter {
    const path = context.optionsPath ?? "spec.method";
    const config = resolveSkTuningConfig(options, path);
    const ids = descriptionTokens(config.description, context.tokenizer, path);
    const tokens = ids.length;
    if (config.variant === "prompt") {
      const hidden = model.config.hiddenSize;
      const embeddings = frozenEmbeddings(model, ids);
      const table = config.projection ? new ProjectedPromptTable(embeddings, tokens, hidden) : new EmbeddingTable(PROMPT_EMBEDDING_NAME, embeddings, tokens, hidden);
      return new PromptAdapter(model, table, promptTuningConfig(model, context, { numVirtualTokens: tokens, init: "RANDOM", initText: undefined }), "skTuning");
    }
    const geometry = prefixGeometry(model.config);
    const keyValues = descriptionKeyValues(model, ids, geometry);
    const table = config.projection
      ? new ProjectedPrefixKeyValues(keyValues, tokens, geometry)
      : new EmbeddingTable("prompt_encoder.embedding.weight", keyValues, tokens, geometry.numLayers * 2 * geometry.tokenDim);
    const peftConfig = prefixTuningConfig(context, geometry, { numVirtualTokens: tokens, projection: false, projectionHiddenSize: geometry.tokenDim });
    return new PrefixAdapter(model, table, geometry, peftConfig, "skTuning");
  },
};

/**
 * The description's meaningful words as token ids, led by BOS where the tokenizer starts texts
 * with it (the model has seen every text begin so).
 */
export function descriptionTokens(description: string, tokenizer: Tokenizer | undefined, path = "spec.method"): number[] {
  if (!tokenizer) throw new MethodOptionsError(`${path}.description`, "SK-tuning needs the model's tokenizer, which the trainer did not pass");
  const ids = tokenizer.encode(meaningfulText(description), { addSpecialTokens: false });
  const withBos = tokenizer.addBos && tokenizer.bosId !== undefined ? [tokenizer.bosId, ...ids] : ids;
  if (withBos.length === 0) throw new MethodOptionsError(`${path}.description`, "has no tokens");
  if (withBos.length > 512) {
    throw new MethodOptionsError(`${path}.description`, `its meaningful words make ${withBos.length} tokens, more than the 512 virtual tokens allowed; shorten it`);
  }
  return withBos;
}
