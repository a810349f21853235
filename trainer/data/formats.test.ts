import { describe, expect, it } from "vitest";
import { testTokenizer } from "../tokenizer/test-tokenizer.ts";
import type { Batch, TokenBatch } from "./index.ts";
import { DataLoader, IGNORE_INDEX, type DatasetOptions } from "./index.ts";
import { MemoryObjectStore } from "./memory-store.ts";

const tokenizer = testTokenizer();
const BOS = tokenizer.bosId as number;
const EOS = tokenizer.eosId as number;

async function batches(lines: unknown[], options: Partial<DatasetOptions> & Pick<DatasetOptions, "format">, batchSize = 1): Promise<Batch[]> {
  const store = new MemoryObjectStore();
  store.putLines("data.jsonl", lines);
  const loader = new DataLoader({ store, train: ["data.jsonl"] }, { maxSeqLength: 256, shuffle: false, ...options }, tokenizer);
  const out: Batch[] = [];
  for await (const batch of loader.trainBatches(batchSize, { epochs: 1 })) out.push(batch);
  return out;
}

function row(tokens: TokenBatch, index: number): { inputIds: number[]; labels: number[] } {
  const start = index * tokens.seqLength;
  const end = start + tokens.attentionMask.subarray(start, start + tokens.seqLength).reduce((sum, bit) => sum + bit, 0);
  return { inputIds: [...tokens.inputIds.subarray(start, end)], labels: [...tokens.labels.subarray(start, end)] };
}

function lmTokens(batch: Batch | undefined): TokenBatch {
  if (batch?.kind !== "lm") throw new Error(`expected a language-model batch, got ${batch?.kind}`);
  return batch.tokens;
}

/** The decoded runs of consecutive positions that carry a loss. */
function labelledRuns(sequence: { inputIds: number[]; labels: number[] }): string[] {
  const runs: number[][] = [];
  sequence.labels.forEach((label, i) => {
    if (label === IGNORE_INDEX) return;
    expect(label).toBe(sequence.inputIds[i]);
    if (i > 0 && sequence.labels[i - 1] !== IGNORE_INDEX) runs.at(-1)!.push(label);
    else runs.push([label]);
  });
  return runs.map((ids) => tokenizer.decode(ids));
}

describe("text format", () => {
  it("is BOS, the text and EOS, with loss on every token but BOS", async () => {
    const [batch] = await batches([{ text: "The cat sat." }], { format: "text" });
    const ids = tokenizer.encode("The cat sat.");
    expect(row(lmTokens(batch), 0)).toEqual({ inputIds: [BOS, ...ids, EOS], labels: [IGNORE_INDEX, ...ids, EOS] });
  });

  it("cuts a long text at maxSeqLength", async () => {
    const [batch] = await batches([{ text: "The cat sat on the mat. The dog ran in the park." }], { format: "text", maxSeqLength: 5 });
    const ids = tokenizer.encode("The cat sat on the mat.");
    expect(row(lmTokens(batch), 0)).toEqual({ inputIds: [BOS, ...ids.slice(0, 4)], labels: [IGNORE_INDEX, ...ids.slice(0, 4)] });
  });
});

describe("instruction format", () => {
  it("puts loss on the output and EOS only, not on BOS or the prompt", async () => {
    const [batch] = await batches([{ instruction: "What is the capital of France?", output: "Paris." }], { format: "instruction" });
    const prompt = tokenizer.encode("### Instruction:\nWhat is the capital of France?\n\n### Response:\n");
    const output = tokenizer.encode("Paris.");
    const sequence = row(lmTokens(batch), 0);
    expect(sequence.inputIds).toEqual([BOS, ...prompt, ...output, EOS]);
    expect(sequence.labels).toEqual([...Array<number>(1 + prompt.length).fill(IGNORE_INDEX), ...output, EOS]);
    expect(labelledRuns(sequence)).toEqual(["Paris.<|endoftext|>"]);
  });

  it("includes a non-empty input in the prompt and reads renamed fields", async () => {
    const [batch] = await batches([{ question: "Say hello.", context: "world", answer: "Hello, world!" }], {
      format: "instruction",
      fields: { instruction: "question", input: "context", output: "answer" },
    });
    const sequence = row(lmTokens(batch), 0);
    expect(tokenizer.decode(sequence.inputIds)).toBe("<s>### Instruction:\nSay hello.\n\n### Input:\nworld\n\n### Response:\nHello, world!<|endoftext|>");
    expect(labelledRuns(sequence)).toEqual(["Hello, world!<|endoftext|>"]);
  });

  it("drops an example whose prompt fills maxSeqLength, since nothing is left to learn", async () => {
    const store = new MemoryObjectStore();
    store.putLines("data.jsonl", [
      { instruction: "What is the capital of France?", output: "Paris." },
      { instruction: "Hi", output: "Hello" },
    ]);
    const promptLength = (instruction: string): number => 1 + tokenizer.encode(`### Instruction:\n${instruction}\n\n### Response:\n`).length;
    const maxSeqLength = promptLength("Hi") + 3;
    expect(promptLength("What is the capital of France?")).toBeGreaterThanOrEqual(maxSeqLength);
    const loader = new DataLoader({ store, train: ["data.jsonl"] }, { format: "instruction", maxSeqLength, shuffle: false }, tokenizer);
    const out: Batch[] = [];
    for await (const batch of loader.trainBatches(4, { epochs: 1 })) out.push(batch);
    expect(out.length).toBe(1);
    expect(lmTokens(out[0]).rows).toBe(1);
    expect(loader.stats.train).toEqual({ lines: 2, badLines: 0, examples: 2, dropped: 1 });

    const nothingLeft = new DataLoader({ store, train: ["data.jsonl"] }, { format: "instruction", maxSeqLength: 4 }, tokenizer);
    await expect(nothingLeft.trainBatches(4).next()).rejects.toThrow(
      "no training examples in memory://test/data.jsonl (2 lines, 0 bad, 2 without a token to learn within maxSeqLength)",
    );
  });
});

describe("chat format", () => {
  it("renders the chat template and puts loss on the assistant turns only, end-of-turn included", async () => {
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello!" },
      { role: "user", content: "Capital of France?" },
      { role: "assistant", content: "Paris." },
    ];
    const [batch] = await batches([{ messages }], { format: "chat" });
    const sequence = row(lmTokens(batch), 0);
    expect(tokenizer.decode(sequence.inputIds)).toBe(tokenizer.applyChatTemplate(messages));
    expect(sequence.inputIds[0]).toBe(BOS);
    expect(labelledRuns(sequence)).toEqual(["Hello!<|im_end|>", "Paris.<|im_end|>"]);
    // Exactly the positions of the two replies, counted from the rendered prefixes.
    const before = (count: number): number => tokenizer.encode(tokenizer.applyChatTemplate(messages.slice(0, count), { addGenerationPrompt: true })).length;
    const reply = (text: string): number => tokenizer.encode(`${text}<|im_end|>`).length;
    const labelled = sequence.labels.flatMap((label, i) => (label === IGNORE_INDEX ? [] : [i]));
    const range = (start: number, length: number): number[] => Array.from({ length }, (_, i) => start + i);
    expect(labelled).toEqual([...range(before(2), reply("Hello!")), ...range(before(4), reply("Paris."))]);
  });

  it("reads renamed message fields", async () => {
    const [batch] = await batches(
      [
        {
          conversation: [
            { from: "user", value: "Hi" },
            { from: "assistant", value: "Hello!" },
          ],
        },
      ],
      { format: "chat", fields: { messages: "conversation", role: "from", content: "value" } },
    );
    expect(labelledRuns(row(lmTokens(batch), 0))).toEqual(["Hello!<|im_end|>"]);
  });
});

describe("preference format", () => {
  it("makes chosen and rejected sequences with the prompt masked, padded to one length", async () => {
    const [batch] = await batches([{ prompt: "Capital of France?", chosen: " Paris.", rejected: " The capital of France is a cat." }], { format: "preference" });
    if (batch?.kind !== "preference") throw new Error("expected a preference batch");
    expect(batch.chosen.seqLength).toBe(batch.rejected.seqLength);
    const prompt = tokenizer.encode("Capital of France?");
    const chosen = row(batch.chosen, 0);
    expect(chosen.inputIds).toEqual([BOS, ...prompt, ...tokenizer.encode(" Paris."), EOS]);
    expect(chosen.labels.slice(0, 1 + prompt.length).every((label) => label === IGNORE_INDEX)).toBe(true);
    expect(labelledRuns(chosen)).toEqual([" Paris.<|endoftext|>"]);
    expect(labelledRuns(row(batch.rejected, 0))).toEqual([" The capital of France is a cat.<|endoftext|>"]);
  });

  const conversation = (reply: string) => [
    { role: "user", content: "Capital of France?" },
    { role: "assistant", content: reply },
  ];
  const rendered = (reply: string) => tokenizer.applyChatTemplate(conversation(reply), { addGenerationPrompt: false });

  for (const [layout, record] of [
    ["an explicit prompt", { prompt: conversation("").slice(0, 1), chosen: conversation("Paris.").slice(1), rejected: conversation("A cat.").slice(1) }],
    ["the implicit prompt of two whole conversations", { chosen: conversation("Paris."), rejected: conversation("A cat.") }],
  ] as const) {
    it(`renders conversational pairs with the chat template, loss on the reply and its end-of-turn token (${layout})`, async () => {
      const [batch] = await batches([record], { format: "preference" });
      if (batch?.kind !== "preference") throw new Error("expected a preference batch");
      const chosen = row(batch.chosen, 0);
      // Tokenized whole, as the template renders it (its own BOS, no EOS added).
      expect(chosen.inputIds).toEqual(tokenizer.encode(rendered("Paris."), { addSpecialTokens: false }));
      expect(labelledRuns(chosen)).toEqual(["Paris.<|im_end|>"]);
      expect(labelledRuns(row(batch.rejected, 0))).toEqual(["A cat.<|im_end|>"]);
      const prompt = tokenizer.applyChatTemplate(conversation("").slice(0, 1), { addGenerationPrompt: true });
      expect(tokenizer.decode(chosen.inputIds.slice(0, chosen.labels.findIndex((label) => label !== IGNORE_INDEX)))).toBe(prompt);
    });
  }

  it("reports conversational records it cannot split into a prompt and two replies, naming the field", async () => {
    const bad = async (record: object) => {
      await expect(batches([record], { format: "preference" })).rejects.toThrow(/data.jsonl:1: /);
      return batches([record], { format: "preference" }).catch((error: Error) => error.message);
    };
    expect(await bad({ chosen: conversation("Paris."), rejected: [{ role: "assistant", content: "A cat." }] })).toMatch(/share no leading messages, and there is no "prompt" field/);
    expect(await bad({ prompt: "Capital of France?", chosen: conversation("Paris.").slice(1), rejected: conversation("A cat.").slice(1) })).toMatch(
      /field "prompt" must be a list of messages when chosen and rejected are/,
    );
    expect(await bad({ prompt: conversation("").slice(0, 1), chosen: conversation("Paris.").slice(1), rejected: "A cat." })).toMatch(/field "rejected" must be a list of messages/);
    expect(await bad({ prompt: conversation("").slice(0, 1), chosen: [{ role: "user", content: "Hi" }], rejected: conversation("A cat.").slice(1) })).toMatch(
      /field "chosen" must end with a message with role "assistant"/,
    );
  });
});

describe("classification format", () => {
  it("maps label names through classLabels and keeps integer labels", async () => {
    const [batch] = await batches(
      [
        { text: "The cat sat.", label: "pos" },
        { text: "The dog ran.", label: 0 },
      ],
      { format: "classification", classLabels: ["neg", "pos"] },
      2,
    );
    if (batch?.kind !== "classification") throw new Error("expected a classification batch");
    expect([...batch.classLabels]).toEqual([1, 0]);
    expect(row(batch.tokens, 0).inputIds).toEqual([BOS, ...tokenizer.encode("The cat sat.")]);
  });
});

describe("packing", () => {
  it("concatenates examples with EOS and cuts maxSeqLength blocks, padding only the last", async () => {
    const texts = ["The cat sat on the mat.", "The dog ran in the park.", "Hello, world!"];
    const out = await batches(
      texts.map((text) => ({ text })),
      { format: "text", packing: true, maxSeqLength: 8 },
      100,
    );
    const tokens = lmTokens(out[0]);
    const stream = texts.flatMap((text) => [BOS, ...tokenizer.encode(text), EOS]);
    const labels = texts.flatMap((text) => [IGNORE_INDEX, ...tokenizer.encode(text), EOS]);
    const rows = Math.ceil(stream.length / 8);
    expect([tokens.rows, tokens.seqLength]).toEqual([rows, 8]);
    const padding = rows * 8 - stream.length;
    expect([...tokens.inputIds]).toEqual([...stream, ...Array<number>(padding).fill(tokenizer.padId as number)]);
    expect([...tokens.labels]).toEqual([...labels, ...Array<number>(padding).fill(IGNORE_INDEX)]);
    expect([...tokens.attentionMask]).toEqual([...Array<number>(stream.length).fill(1), ...Array<number>(padding).fill(0)]);
  });
});
