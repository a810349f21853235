import { describe, expect, it } from "vitest";
import { StorageError } from "../../storage/object-store.ts";
import { MemoryObjectStore } from "../data/memory-store.ts";
import { TEST_CHAT_TEMPLATE, putTestModel, testTokenizer, testTokenizerFiles } from "./test-tokenizer.ts";
import { Tokenizer, TokenizerError, loadTokenizer } from "./tokenizer.ts";

describe("Tokenizer", () => {
  it("reads the special tokens from tokenizer_config.json and adds BOS only when asked", () => {
    const tokenizer = testTokenizer();
    expect([tokenizer.eosToken, tokenizer.eosId]).toEqual(["<|endoftext|>", 0]);
    expect([tokenizer.padToken, tokenizer.padId]).toEqual(["<|pad|>", 1]);
    expect([tokenizer.bosToken, tokenizer.bosId]).toEqual(["<s>", 2]);
    expect(tokenizer.addBos).toBe(true);
    expect(tokenizer.addEos).toBe(false);
    const plain = tokenizer.encode("The cat sat.");
    expect(tokenizer.encode("The cat sat.", { addSpecialTokens: true })).toEqual([2, ...plain]);
    expect(plain).not.toContain(2);
  });

  it("round-trips text exactly, and special tokens unless skipped", () => {
    const tokenizer = testTokenizer();
    for (const text of ["The capital of France is Paris.", "  spaces  and\ttabs\n", "ünïcödé 日本 🎉", "x<|im_end|>y"]) {
      expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
    }
    const ids = tokenizer.encode("Hello<|endoftext|>", { addSpecialTokens: true });
    expect(tokenizer.decode(ids)).toBe("<s>Hello<|endoftext|>");
    expect(tokenizer.decode(ids, { skipSpecialTokens: true })).toBe("Hello");
    expect(tokenizer.decode([])).toBe("");
    expect(tokenizer.encode("")).toEqual([]);
  });

  it("detects BOS from the post-processor when tokenizer_config.json does not say", () => {
    const files = testTokenizerFiles();
    const tokenizer = Tokenizer.fromSources({ tokenizerJson: files.tokenizerJson, tokenizerConfig: { bos_token: "<s>", eos_token: "<|endoftext|>" } });
    expect(tokenizer.addBos).toBe(true);
    const noBos = Tokenizer.fromSources({ tokenizerJson: files.tokenizerJson, tokenizerConfig: { bos_token: "<s>", add_bos_token: false } });
    expect(noBos.addBos).toBe(false);
    expect(noBos.encode("a", { addSpecialTokens: true })).toEqual(noBos.encode("a"));
  });

  it("accepts special tokens as AddedToken objects and falls back to config.json ids", () => {
    const files = testTokenizerFiles();
    const fromObject = Tokenizer.fromSources({
      tokenizerJson: files.tokenizerJson,
      tokenizerConfig: { eos_token: { __type: "AddedToken", content: "<|im_end|>", special: true } },
    });
    expect([fromObject.eosToken, fromObject.eosId]).toEqual(["<|im_end|>", 4]);
    const fromModelConfig = Tokenizer.fromSources({ tokenizerJson: files.tokenizerJson, modelConfig: { eos_token_id: [0, 4], bos_token_id: 2 } });
    expect([fromModelConfig.eosToken, fromModelConfig.eosId, fromModelConfig.bosId, fromModelConfig.padId]).toEqual(["<|endoftext|>", 0, 2, undefined]);
  });

  it("renders the chat template with messages, special tokens and the generation prompt", () => {
    const tokenizer = testTokenizer();
    const messages = [
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello!" },
    ];
    expect(tokenizer.applyChatTemplate(messages)).toBe("<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n");
    expect(tokenizer.applyChatTemplate(messages.slice(0, 1), { addGenerationPrompt: true })).toBe("<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  });

  it("says that a model without a chat template has none", () => {
    const tokenizer = Tokenizer.fromSources(testTokenizerFiles({ chatTemplate: false }));
    expect(tokenizer.chatTemplate).toBeUndefined();
    expect(() => tokenizer.applyChatTemplate([{ role: "user", content: "x" }])).toThrow(/no chat template/);
  });
});

describe("loadTokenizer", () => {
  it("loads tokenizer.json and tokenizer_config.json from a store prefix", async () => {
    const store = new MemoryObjectStore();
    await putTestModel(store, "models/tiny");
    const tokenizer = await loadTokenizer(store, "models/tiny");
    expect(tokenizer.encode("The cat")).toEqual(testTokenizer().encode("The cat"));
    expect(tokenizer.chatTemplate).toBe(TEST_CHAT_TEMPLATE);
  });

  it("prefers chat_template.jinja to tokenizer_config.json's chat_template", async () => {
    const store = new MemoryObjectStore();
    await putTestModel(store, "m");
    await store.put("m/chat_template.jinja", "{% for m in messages %}[{{ m.content }}]{% endfor %}");
    expect((await loadTokenizer(store, "m")).applyChatTemplate([{ role: "user", content: "x" }])).toBe("[x]");
  });

  it("reports a missing tokenizer.json as a NotFound StorageError naming the object", async () => {
    const store = new MemoryObjectStore("s3://bucket/root");
    const error = await loadTokenizer(store, "models/none").catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(StorageError);
    expect(error).toMatchObject({ code: "NotFound", message: "s3://bucket/root/models/none/tokenizer.json: no such object" });
  });

  it("names the file that does not parse or does not fit", async () => {
    const store = new MemoryObjectStore();
    await putTestModel(store, "m");
    const files = testTokenizerFiles();

    await store.put("m/tokenizer.json", "{not json");
    await expect(loadTokenizer(store, "m")).rejects.toThrow(/^memory:\/\/test\/m\/tokenizer\.json: is not valid JSON \(.+\)$/);

    await store.put("m/tokenizer.json", JSON.stringify({ version: "1.0" }));
    await expect(loadTokenizer(store, "m")).rejects.toThrow('memory://test/m/tokenizer.json: missing "model"; is this a fast-tokenizer tokenizer.json?');

    await store.put("m/tokenizer.json", JSON.stringify(files.tokenizerJson));
    await store.put("m/tokenizer_config.json", JSON.stringify({ eos_token: "</s>" }));
    const error = await loadTokenizer(store, "m").catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TokenizerError);
    expect((error as TokenizerError).message).toBe(
      'memory://test/m/tokenizer_config.json: eos_token "</s>" is not in the vocabulary of memory://test/m/tokenizer.json',
    );

    await store.put("m/tokenizer_config.json", JSON.stringify({ chat_template: "{% for %}" }));
    await expect(loadTokenizer(store, "m")).rejects.toThrow(/^memory:\/\/test\/m\/tokenizer_config\.json: chat template does not parse: /);
  });
});
