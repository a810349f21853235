import type { ObjectStore } from "../../storage/object-store.ts";
import { byteLevelBpeTokenizerJson, tokenizerConfigJson, trainByteLevelBpe } from "./bpe-trainer.ts";
import { Tokenizer } from "./tokenizer.ts";

/**
 * A tiny tokenizer for tests: byte-level BPE learned from a few sentences, BOS prepended,
 * ChatML-style special tokens and chat template. Tests build it with the project's own BPE
 * trainer, so they need no downloaded model.
 */
export const TEST_SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<s>", "<|im_start|>", "<|im_end|>"] as const;

export const TEST_CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const CORPUS = [
  "The cat sat on the mat. The dog ran in the park.",
  "What is the capital of France? The capital of France is Paris.",
  "Translate to French: hello world. Bonjour le monde.",
  "### Instruction:\nSay hello.\n\n### Input:\nworld\n\n### Response:\nHello, world!",
  "Answer the question. Good answers are short and true.",
];

export function testTokenizerFiles(options: { chatTemplate?: boolean } = {}): { tokenizerJson: object; tokenizerConfig: object } {
  const model = trainByteLevelBpe(CORPUS, { vocabSize: 400, specialTokens: TEST_SPECIAL_TOKENS });
  return {
    tokenizerJson: byteLevelBpeTokenizerJson(model, { bosToken: "<s>" }),
    tokenizerConfig: tokenizerConfigJson({
      bosToken: "<s>",
      eosToken: "<|endoftext|>",
      padToken: "<|pad|>",
      addBosToken: true,
      ...(options.chatTemplate === false ? {} : { chatTemplate: TEST_CHAT_TEMPLATE }),
    }),
  };
}

let cached: Tokenizer | undefined;

/** The test tokenizer, built once per test file. */
export function testTokenizer(): Tokenizer {
  cached ??= Tokenizer.fromSources(testTokenizerFiles());
  return cached;
}

/** Writes the test tokenizer's files (and a minimal Llama config.json) under `prefix`. */
export async function putTestModel(store: ObjectStore, prefix: string): Promise<void> {
  const files = testTokenizerFiles();
  await store.put(`${prefix}/tokenizer.json`, JSON.stringify(files.tokenizerJson));
  await store.put(`${prefix}/tokenizer_config.json`, JSON.stringify(files.tokenizerConfig));
  await store.put(
    `${prefix}/config.json`,
    JSON.stringify({
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      vocab_size: 400,
      hidden_size: 16,
      intermediate_size: 32,
      num_hidden_layers: 1,
      num_attention_heads: 2,
    }),
  );
}
