import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { describe, expect, it } from "vitest";
import { byteLevelBpeTokenizerJson, tokenizerConfigJson, trainByteLevelBpe } from "./bpe-trainer.ts";

const SAMPLES = [
  "The cat sat on the mat.",
  "  leading spaces, trailing spaces  ",
  "tabs\tand\nnew lines\r\n",
  "naïve café, 日本語, Ελληνικά, emoji 🎉🐈",
  "numbers 1234567890 and punctuation !?.,;:'\"()[]{}",
  "it's they're we've I'm you'll he'd",
  "",
];

describe("trainByteLevelBpe", () => {
  it("merges the most frequent pair first and stops below minFrequency", () => {
    // Words: "ab", " ab" twice, " cd". Pairs: a+b 3 times, Ġ+a twice, Ġ+c and c+d once.
    const model = trainByteLevelBpe(["ab ab ab cd"], { vocabSize: 1000 });
    expect(model.merges).toEqual([
      ["a", "b"],
      ["Ġ", "ab"],
    ]);
    expect(model.tokens.length).toBe(258);
    expect(model.tokens.slice(256)).toEqual(["ab", "Ġab"]);
  });

  it("puts special tokens first, then the 256 bytes, and stops at vocabSize", () => {
    const letters = "abcdefghijklmnopqrstuvwxyz";
    const word = (i: number): string => [i, i * 7, i * 11].map((n) => letters[n % 26]).join("");
    const corpus = Array.from({ length: 400 }, (_, i) => `${word(i)} ${word(i + 1)}`);
    const model = trainByteLevelBpe(corpus, { vocabSize: 300, specialTokens: ["<|endoftext|>", "<pad>"] });
    expect(model.tokens.slice(0, 2)).toEqual(["<|endoftext|>", "<pad>"]);
    expect(model.tokens.length).toBe(300);
    expect(model.merges.length).toBe(300 - 258);
  });

  it("is deterministic", () => {
    const corpus = ["abc abd abe bcd bce", "hello hello help helm"];
    expect(trainByteLevelBpe(corpus, { vocabSize: 280 })).toEqual(trainByteLevelBpe(corpus, { vocabSize: 280 }));
  });

  it("refuses a vocabSize below the base vocabulary", () => {
    expect(() => trainByteLevelBpe([], { vocabSize: 257, specialTokens: ["<a>", "<b>"] })).toThrow(/at least 258/);
  });
});

describe("byteLevelBpeTokenizerJson", () => {
  const corpus = Array.from({ length: 200 }, (_, i) => SAMPLES[i % SAMPLES.length] as string);
  const model = trainByteLevelBpe(corpus, { vocabSize: 400, specialTokens: ["<|endoftext|>", "<s>"] });

  it("loads in @huggingface/tokenizers and round-trips any text exactly, special tokens included", () => {
    const tokenizer = new HfTokenizer(byteLevelBpeTokenizerJson(model), tokenizerConfigJson({ eosToken: "<|endoftext|>" }));
    for (const text of [...SAMPLES, "unseen wörds 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a<|endoftext|>b<s>"]) {
      const ids = tokenizer.encode(text).ids;
      expect(ids.every((id: number) => Number.isInteger(id) && id >= 0 && id < model.tokens.length)).toBe(true);
      expect(text === "" ? "" : tokenizer.decode(ids, { clean_up_tokenization_spaces: false })).toBe(text);
    }
    expect(tokenizer.encode("a<|endoftext|>").ids).toEqual([tokenizer.token_to_id("a"), 0]);
  });

  it("uses the learned merges: frequent words become single tokens", () => {
    const tokenizer = new HfTokenizer(byteLevelBpeTokenizerJson(model), {});
    expect(tokenizer.tokenize("The cat sat on the mat.")).toEqual(["The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", "."]);
  });

  it("prepends BOS through a TemplateProcessing post-processor when asked", () => {
    const tokenizer = new HfTokenizer(byteLevelBpeTokenizerJson(model, { bosToken: "<s>" }), {});
    expect(tokenizer.encode("cat").ids[0]).toBe(1);
    expect(tokenizer.encode("cat", { add_special_tokens: false }).ids[0]).not.toBe(1);
    expect(() => byteLevelBpeTokenizerJson(model, { bosToken: "<missing>" })).toThrow(/special tokens/);
  });
});
