import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { testTokenizer } from "../tokenizer/test-tokenizer.ts";
import { DataLoader, DatasetError, formatBadLine, type BadLine, type Batch, type BatchData, type DatasetOptions, type DataPosition } from "./index.ts";
import { MemoryObjectStore } from "./memory-store.ts";

const tokenizer = testTokenizer();

/** Two files of numbered texts: "n0" .. "n{count - 1}". */
function numberedStore(count: number): MemoryObjectStore {
  const store = new MemoryObjectStore();
  const half = Math.floor(count / 2);
  store.putLines("train/a.jsonl", Array.from({ length: half }, (_, i) => ({ text: `n${i}` })));
  store.putLines("train/b.jsonl", Array.from({ length: count - half }, (_, i) => ({ text: `n${half + i}` })));
  return store;
}

function loaderFor(store: MemoryObjectStore, options: Partial<DatasetOptions>, files: { train?: string[]; eval?: string[] } = {}): DataLoader {
  return new DataLoader(
    { store, train: files.train ?? ["train/a.jsonl", "train/b.jsonl"], ...(files.eval ? { eval: files.eval } : {}) },
    { format: "text", maxSeqLength: 64, ...options },
    tokenizer,
  );
}

/** The texts of an unpacked language-model batch, one per row. */
function texts(batch: BatchData): string[] {
  if (batch.kind !== "lm") throw new Error("expected a language-model batch");
  const { rows, seqLength, inputIds } = batch.tokens;
  return Array.from({ length: rows }, (_, row) => tokenizer.decode([...inputIds.subarray(row * seqLength, (row + 1) * seqLength)], { skipSpecialTokens: true }));
}

async function collect<T>(iterable: AsyncIterable<T>, limit = Number.POSITIVE_INFINITY): Promise<T[]> {
  const out: T[] = [];
  for await (const item of iterable) {
    out.push(item);
    if (out.length >= limit) break;
  }
  return out;
}

/** A batch as plain arrays, to compare batches from different loaders. */
function plain(batch: Batch): unknown {
  return JSON.parse(JSON.stringify(batch, (_key, value: unknown) => (ArrayBuffer.isView(value) ? Array.from(value as Int32Array) : value)));
}

describe("shuffling", () => {
  it("gives the same order for the same seed, another for another seed, and a new one each epoch", async () => {
    const store = numberedStore(40);
    const order = async (seed: number): Promise<string[][]> =>
      (await collect(loaderFor(store, { seed, shuffleBufferSize: 8 }).trainBatches(40, { epochs: 2 }))).map(texts);
    const [epoch0, epoch1] = await order(1);
    expect(await order(1)).toEqual([epoch0, epoch1]);
    expect((await order(2))[0]).not.toEqual(epoch0);
    expect(epoch1).not.toEqual(epoch0);
    // Each epoch is a permutation of the whole dataset, though the buffer holds only 8 examples.
    const all = Array.from({ length: 40 }, (_, i) => `n${i}`).sort();
    expect([...epoch0!].sort()).toEqual(all);
    expect([...epoch1!].sort()).toEqual(all);
    expect(epoch0).not.toEqual(Array.from({ length: 40 }, (_, i) => `n${i}`));
  });

  it("keeps file order with shuffle off", async () => {
    const [batch] = await collect(loaderFor(numberedStore(6), { shuffle: false }).trainBatches(6, { epochs: 1 }));
    expect(texts(batch!)).toEqual(["n0", "n1", "n2", "n3", "n4", "n5"]);
  });
});

describe("resuming from a data position", () => {
  const cases: [string, Partial<DatasetOptions>][] = [
    ["unpacked", { seed: 3, shuffleBufferSize: 5 }],
    ["packed", { seed: 4, shuffleBufferSize: 5, packing: true, maxSeqLength: 7 }],
  ];
  for (const [name, options] of cases) {
    it(`yields exactly the batches an uninterrupted loader yields next (${name}, across epochs)`, async () => {
      const store = numberedStore(23);
      const uninterrupted = await collect(loaderFor(store, options).trainBatches(3, { epochs: 3 }));
      expect(uninterrupted.length).toBeGreaterThan(10);
      expect(new Set(uninterrupted.map((batch) => batch.epoch))).toEqual(new Set([0, 1, 2]));
      for (let stop = 0; stop < uninterrupted.length - 1; stop++) {
        // A checkpoint stores the position as JSON; a fresh loader resumes from it.
        const saved = JSON.parse(JSON.stringify(uninterrupted[stop]!.position)) as DataPosition;
        const resumed = await collect(loaderFor(store, options).trainBatches(3, { epochs: 3, from: saved }));
        expect(resumed.map(plain), `resumed after batch ${stop}`).toEqual(uninterrupted.slice(stop + 1).map(plain));
      }
    });
  }

  it("starts from start() like a loader given no position", async () => {
    const store = numberedStore(10);
    const loader = loaderFor(store, { seed: 5 });
    expect((await collect(loader.trainBatches(4, { from: loader.start(), epochs: 1 }))).map(plain)).toEqual(
      (await collect(loaderFor(store, { seed: 5 }).trainBatches(4, { epochs: 1 }))).map(plain),
    );
  });

  it("refuses a position saved with other dataset settings", async () => {
    const store = numberedStore(10);
    const [batch] = await collect(loaderFor(store, { seed: 1 }).trainBatches(2), 1);
    await expect(loaderFor(store, { seed: 2 }).trainBatches(2, { from: batch!.position }).next()).rejects.toThrow(/other dataset settings/);
  });
});

describe("eval split", () => {
  async function split(seed: number, store: MemoryObjectStore): Promise<{ train: string[]; eval: string[] }> {
    const loader = loaderFor(store, { seed, evalFraction: 0.25 });
    const train = (await collect(loader.trainBatches(1000, { epochs: 1 }))).flatMap(texts);
    const evalTexts = (await collect(loader.evalBatches(7))).flatMap(texts);
    return { train, eval: evalTexts };
  }

  it("holds out a deterministic share of lines, disjoint from training", async () => {
    const store = numberedStore(400);
    const first = await split(9, store);
    expect(first.eval.length).toBeGreaterThan(60);
    expect(first.eval.length).toBeLessThan(140);
    expect(first.train.filter((text) => first.eval.includes(text))).toEqual([]);
    expect([...first.train, ...first.eval].sort()).toEqual(Array.from({ length: 400 }, (_, i) => `n${i}`).sort());
    const again = await split(9, store);
    expect(again.eval).toEqual(first.eval);
    expect([...again.train].sort()).toEqual([...first.train].sort());
    expect((await split(10, store)).eval).not.toEqual(first.eval);
  });

  it("reads a separate eval file in order, and none when there is no eval data", async () => {
    const store = numberedStore(6);
    store.putLines("eval.jsonl", [{ text: "e1" }, { text: "e2" }, { text: "e3" }]);
    const loader = loaderFor(store, {}, { eval: ["eval.jsonl"] });
    expect((await collect(loader.evalBatches(2))).map(texts)).toEqual([["e1", "e2"], ["e3"]]);
    expect((await collect(loader.trainBatches(100, { epochs: 1 }))).flatMap(texts).length).toBe(6);
    expect(await collect(loaderFor(store, {}).evalBatches(2))).toEqual([]);
    expect(() => loaderFor(store, { evalFraction: 0.1 }, { eval: ["eval.jsonl"] })).toThrow(/either eval files or evalFraction/);
  });
});

describe("bad lines", () => {
  const good = { instruction: "Say hi", output: "hi" };
  const chat = { messages: [{ role: "user", content: "a" }, { role: "assistant", content: "b" }] };
  // [kind, bad line, options, problem, a good line for the same options]
  const kinds: [string, string, Partial<DatasetOptions>, string | RegExp, object?][] = [
    ["invalid JSON", "{not json", {}, /^invalid JSON \(.+\)$/],
    ["a non-object", "[1, 2]", {}, "expected a JSON object, got an array"],
    ["a missing field", '{"instruction": "x"}', {}, 'missing field "output"'],
    ["a missing renamed field", '{"instruction": "x"}', { fields: { output: "answer" } }, 'missing field "answer" (the output field)', { instruction: "x", answer: "y" }],
    ["a wrong type", '{"instruction": "x", "output": 5}', {}, 'field "output" must be a string, got a number (5)'],
    ["an empty field", '{"instruction": "x", "output": " "}', {}, 'field "output" is empty'],
    ["a line over maxLineBytes", `{"instruction": "${"x".repeat(100)}", "output": "y"}`, { maxLineBytes: 64 }, "line is longer than maxLineBytes (64 bytes); is the file JSONL, one object per line?"],
    ["a chat without an assistant turn", '{"messages": [{"role": "user", "content": "hi"}]}', { format: "chat" }, 'field "messages" has no message with role "assistant", so there is nothing to train on', chat],
    ["a chat message without content", '{"messages": [{"role": "user", "content": null}]}', { format: "chat" }, 'field "messages[0].content" must be a string, got null', chat],
    ["an unknown class", '{"text": "x", "label": "maybe"}', { format: "classification", classLabels: ["no", "yes"] }, 'field "label" is "maybe", which is not one of classLabels (no, yes)', { text: "a", label: 0 }],
  ];
  for (const [kind, line, options, problem, goodLine = good] of kinds) {
    it(`reports ${kind} as file:line: problem and stops (badLines "fail")`, async () => {
      const store = new MemoryObjectStore("s3://bucket/data");
      store.putLines("sets/train.jsonl", [goodLine, line, goodLine]);
      const loader = new DataLoader({ store, train: ["sets/train.jsonl"] }, { format: "instruction", maxSeqLength: 64, ...options }, tokenizer);
      const error = await collect(loader.trainBatches(1, { epochs: 1 })).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(DatasetError);
      const badLine = (error as DatasetError).badLines[0]!;
      expect(formatBadLine(badLine)).toMatch(/^s3:\/\/bucket\/data\/sets\/train\.jsonl:2: /);
      expect(badLine.problem).toEqual(typeof problem === "string" ? problem : expect.stringMatching(problem));
      expect((error as DatasetError).message).toBe(`${formatBadLine(badLine)} (badLines is "fail"; fix the line, or set badLines "skip" to skip bad lines)`);
      expect((error as DatasetError).reason).toBe("InvalidDataset");
    });
  }

  function mixed(): MemoryObjectStore {
    const store = new MemoryObjectStore();
    const lines: unknown[] = Array.from({ length: 10 }, (_, i) => ({ text: `n${i}` }));
    lines.splice(3, 0, "{oops");
    lines.splice(8, 0, { text: 7 });
    store.putLines("train.jsonl", lines);
    return store;
  }

  it('skips and counts bad lines with badLines "skip"', async () => {
    const reported: BadLine[] = [];
    const loader = new DataLoader({ store: mixed(), train: ["train.jsonl"] }, { format: "text", maxSeqLength: 64, badLines: "skip", maxBadFraction: 0.2, shuffle: false }, tokenizer, {
      onBadLine: (badLine) => reported.push(badLine),
    });
    const [batch] = await collect(loader.trainBatches(100, { epochs: 1 }));
    expect(texts(batch!)).toEqual(Array.from({ length: 10 }, (_, i) => `n${i}`));
    expect(loader.stats.train).toEqual({ lines: 12, badLines: 2, examples: 10, dropped: 0 });
    expect(reported.map(formatBadLine)).toEqual([
      expect.stringMatching(/^memory:\/\/test\/train\.jsonl:4: invalid JSON \(.+\)$/),
      'memory://test/train.jsonl:9: field "text" must be a string, got a number (7)',
    ]);
  });

  it('skips blank lines silently, as Hugging Face datasets\' JSON loader does, even with badLines "fail"', async () => {
    const store = new MemoryObjectStore();
    store.putLines("train.jsonl", ["", { text: "n0" }, "   ", "\t", { text: "n1" }, ""]);
    const reported: BadLine[] = [];
    const loader = new DataLoader({ store, train: ["train.jsonl"] }, { format: "text", maxSeqLength: 64, badLines: "fail", shuffle: false }, tokenizer, {
      onBadLine: (badLine) => reported.push(badLine),
    });
    const [batch] = await collect(loader.trainBatches(100, { epochs: 1 }));
    expect(texts(batch!)).toEqual(["n0", "n1"]);
    expect(loader.stats.train).toEqual({ lines: 2, badLines: 0, examples: 2, dropped: 0 });
    expect(reported).toEqual([]);
  });

  it("fails once the bad lines pass maxBadLines or maxBadFraction", async () => {
    const run = (options: Partial<DatasetOptions>): Promise<unknown> =>
      collect(new DataLoader({ store: mixed(), train: ["train.jsonl"] }, { format: "text", maxSeqLength: 64, badLines: "skip", ...options }, tokenizer).trainBatches(100, { epochs: 1 }));
    await expect(run({ maxBadLines: 1, maxBadFraction: 1 })).rejects.toThrow(
      /^too many bad lines in the training data: 2 of 9 lines read \(22\.2%\), more than maxBadLines \(1\); the first:\n {2}memory:\/\/test\/train\.jsonl:4: invalid JSON/,
    );
    await expect(run({ maxBadFraction: 0.1 })).rejects.toThrow(/^too many bad lines in the training data: 2 of 12 lines read \(16\.7%\), more than maxBadFraction \(0\.1\)/);
    await expect(run({ maxBadLines: 2, maxBadFraction: 0.2 })).resolves.toHaveLength(1);
  });
});

describe("streaming", () => {
  it("closes the file when the caller stops early", async () => {
    const store = new MemoryObjectStore();
    const opened: Readable[] = [];
    store.putGenerated("endless.jsonl", 0, () => {
      const stream = Readable.from(
        (function* () {
          for (;;) yield Buffer.from('{"text":"n1"}\n');
        })(),
      );
      opened.push(stream);
      return stream;
    });
    const loader = new DataLoader({ store, train: ["endless.jsonl"] }, { format: "text", maxSeqLength: 16, shuffleBufferSize: 4 }, tokenizer);
    expect(await collect(loader.trainBatches(2), 3)).toHaveLength(3);
    expect(opened.map((stream) => stream.destroyed)).toEqual([true]);
  });

  it("reads 200k lines (about 120 MB) with bounded memory", async () => {
    const lineCount = 200_000;
    const padding = "x".repeat(560);
    const store = new MemoryObjectStore();
    // The file is generated as it is read, so the test itself never holds it.
    store.putGenerated("big.jsonl", lineCount * 600, () =>
      Readable.from(
        (function* () {
          const linesPerChunk = 100;
          for (let start = 0; start < lineCount; start += linesPerChunk) {
            let chunk = "";
            for (let i = start; i < start + linesPerChunk; i++) chunk += `{"text":"n${i % 10}","meta":"${padding}"}\n`;
            yield Buffer.from(chunk);
          }
        })(),
      ),
    );
    const loader = new DataLoader({ store, train: ["big.jsonl"] }, { format: "text", maxSeqLength: 16, shuffleBufferSize: 1000 }, tokenizer);
    const baseline = process.memoryUsage().heapUsed;
    let peak = 0;
    let rows = 0;
    for await (const batch of loader.trainBatches(256, { epochs: 1 })) {
      if (batch.kind === "lm") rows += batch.tokens.rows;
      peak = Math.max(peak, process.memoryUsage().heapUsed - baseline);
    }
    expect(rows).toBe(lineCount);
    expect(loader.stats.train.lines).toBe(lineCount);
    expect(peak).toBeLessThan(64 * 1024 * 1024);
  });
});
