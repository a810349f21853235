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

/**
 * A SentencePiece-style tokenizer in Llama-2's layout (the layout Mistral's also has): the
 * normalizer prepends "▁" to the text and writes spaces as "▁", BPE runs with byte fallback,
 * and the post-processor adds <s>; ChatML's <|im_start|> and <|im_end|> are special tokens. Its merges build each word of `words` as one "▁word" token,
 * letter by letter; anything else falls back to single letters or bytes. Tokenizing a text's
 * parts one by one gives other tokens than tokenizing it whole, which is what it is for.
 */
export function metaspaceTokenizerFiles(
  words: readonly string[] = ["What", "is", "the", "capital", "of", "France?", "Paris.", "Paris", "Answer:", "Question:"],
): { tokenizerJson: object; tokenizerConfig: object } {
  const vocab: Record<string, number> = {};
  const add = (token: string): void => {
    if (!Object.hasOwn(vocab, token)) vocab[token] = Object.keys(vocab).length;
  };
  const specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"];
  for (const special of specials) add(special);
  for (let byte = 0; byte < 256; byte++) add(`<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`);
  add("▁");
  const merges: string[] = [];
  for (const word of words) {
    for (const letter of word) add(letter);
    let built = "▁";
    for (const letter of word) {
      merges.push(`${built} ${letter}`);
      built += letter;
      add(built);
    }
  }
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const bos = { SpecialToken: { id: "<s>", type_id: 0 } };
  return {
    tokenizerJson: {
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: specials.map((content, id) => special(id, content)),
      normalizer: {
        type: "Sequence",
        normalizers: [
          { type: "Prepend", prepend: "▁" },
          { type: "Replace", pattern: { String: " " }, content: "▁" },
        ],
      },
      pre_tokenizer: null,
      post_processor: {
        type: "TemplateProcessing",
        single: [bos, { Sequence: { id: "A", type_id: 0 } }],
        pair: [bos, { Sequence: { id: "A", type_id: 0 } }, bos, { Sequence: { id: "B", type_id: 1 } }],
        special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
      },
      decoder: {
        type: "Sequence",
        decoders: [
          { type: "Replace", pattern: { String: "▁" }, content: " " },
          { type: "ByteFallback" },
          { type: "Fuse" },
          { type: "Strip", content: " ", start: 1, stop: 0 },
        ],
      },
      model: {
        type: "BPE",
        dropout: null,
        unk_token: "<unk>",
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: true,
        ignore_merges: false,
        vocab,
        merges,
      },
    },
    tokenizerConfig: tokenizerConfigJson({ bosToken: "<s>", eosToken: "</s>", addBosToken: true, chatTemplate: TEST_CHAT_TEMPLATE }),
  };
}
