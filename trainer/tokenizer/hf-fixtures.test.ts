import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { encodeExample, IGNORE_INDEX } from "../data/encode.ts";
import { ALPACA_TEMPLATE } from "../data/options.ts";
import { parseLine } from "../data/records.ts";
import { Tokenizer, type ChatMessage } from "./tokenizer.ts";

/**
 * The trainer's tokenizer against Hugging Face's on real tokenizer.json kinds: the golden files
 * under tests/fixtures/hf/tokenizers/ were written by scripts/hf/make-tokenizer-fixtures.py
 * with `tokenizers` and transformers (see that script for what each folder is). No Python here.
 */
const FIXTURES = fileURLToPath(new URL("../../tests/fixtures/hf/tokenizers/", import.meta.url));

interface Expected {
  addBos: boolean;
  strings: { text: string; ids: number[]; decoded: string; decodedSkippingSpecial: string; transformersDecoded: string; idsWithSpecialTokens: number[] }[];
  completions: { prompt: string; completion: string; ids: number[]; completionMask: number[] }[];
  chats: { messages: ChatMessage[]; rendered: string; promptWithGenerationPrompt: string; ids: number[]; assistantMask: number[] }[];
}

const readJson = (folder: string, file: string): unknown => JSON.parse(readFileSync(path.join(FIXTURES, folder, file), "utf8"));

const folders = readdirSync(FIXTURES, { withFileTypes: true })
  .filter((entry) => entry.isDirectory())
  .map((entry) => entry.name)
  .sort();

it("has the four tokenizer kinds the fixture script writes", () => {
  expect(folders).toEqual(["llama3", "mistral", "mistral-metaspace", "qwen2-chatml"]);
});

describe.each(folders)("tokenizer fixture %s", (folder) => {
  const tokenizer = Tokenizer.fromSources({ tokenizerJson: readJson(folder, "tokenizer.json"), tokenizerConfig: readJson(folder, "tokenizer_config.json") });
  const expected = readJson(folder, "expected.json") as Expected;
  const cleansUpSpaces = (readJson(folder, "tokenizer_config.json") as { clean_up_tokenization_spaces?: boolean }).clean_up_tokenization_spaces === true;

  it.each(expected.strings.map((entry) => [JSON.stringify(entry.text), entry] as const))("encodes and decodes %s as tokenizers does", (_, entry) => {
    expect(tokenizer.encode(entry.text)).toEqual(entry.ids);
    expect(tokenizer.encode(entry.text, { addSpecialTokens: true })).toEqual(entry.idsWithSpecialTokens);
    // decode is transformers' (clean_up_tokenization_spaces as the config says), which is the
    // tokenizers library's when the config does not clean up.
    expect(tokenizer.decode(entry.ids)).toBe(entry.transformersDecoded);
    if (!cleansUpSpaces) {
      expect(tokenizer.decode(entry.ids)).toBe(entry.decoded);
      expect(tokenizer.decode(entry.ids, { skipSpecialTokens: true })).toBe(entry.decodedSkippingSpecial);
    }
  });

  it("adds BOS as transformers does", () => {
    expect(tokenizer.addBos).toBe(expected.addBos);
  });

  it.each(expected.completions.map((entry) => [JSON.stringify(entry.prompt + entry.completion), entry] as const))(
    "tokenizes prompt + completion %s whole, with loss on the tokens holding the completion",
    (_, entry) => {
      const line = JSON.stringify({ instruction: entry.prompt, output: entry.completion });
      const parsed = parseLine(line, { format: "instruction", fields: {}, instructionTemplate: { ...ALPACA_TEMPLATE, withoutInput: "{instruction}" }, classLabels: undefined, tokenizer });
      if (!parsed.example) throw new Error(parsed.problem);
      const encoded = encodeExample(parsed.example, tokenizer, { maxSeqLength: undefined });
      if (encoded?.kind !== "lm") throw new Error("expected a language-model example");
      // The instruction format frames the text with BOS (when the tokenizer adds one) and EOS (with loss).
      const { inputIds, labels } = encoded.sequence;
      const start = tokenizer.addBos ? 1 : 0;
      expect(inputIds.slice(start, -1)).toEqual(entry.ids);
      expect(labels.slice(start, -1).map((label) => (label === IGNORE_INDEX ? 0 : 1))).toEqual(entry.completionMask);
      expect([inputIds.at(-1), labels.at(-1)]).toEqual([tokenizer.eosId, tokenizer.eosId]);
    },
  );

  it.each(expected.chats.map((chat, index) => [index, chat] as const))("renders conversation %i as apply_chat_template, with TRL's assistant-only loss mask", (_, chat) => {
    expect(tokenizer.applyChatTemplate(chat.messages)).toBe(chat.rendered);
    expect(tokenizer.applyChatTemplate(chat.messages.slice(0, -1), { addGenerationPrompt: true })).toBe(chat.promptWithGenerationPrompt);
    const parsed = parseLine(JSON.stringify({ messages: chat.messages }), {
      format: "chat",
      fields: {},
      instructionTemplate: ALPACA_TEMPLATE,
      classLabels: undefined,
      tokenizer,
    });
    if (!parsed.example) throw new Error(parsed.problem);
    const encoded = encodeExample(parsed.example, tokenizer, { maxSeqLength: undefined });
    if (encoded?.kind !== "lm") throw new Error("expected a language-model example");
    expect(encoded.sequence.inputIds).toEqual(chat.ids);
    expect(encoded.sequence.labels.map((label) => (label === IGNORE_INDEX ? 0 : 1))).toEqual(chat.assistantMask);
  });
});
