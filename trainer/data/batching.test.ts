import { describe, expect, it } from "vitest";
import { Packer, RowQueue, collate } from "./batching.ts";
import { IGNORE_INDEX as X, type EncodedExample } from "./encode.ts";

const EOS = 0;

function lm(inputIds: number[], labels: number[]): EncodedExample {
  return { kind: "lm", sequence: { inputIds, labels } };
}

describe("Packer", () => {
  it("cuts the concatenated examples into blocks, labels travelling with their tokens", () => {
    const packer = new Packer(4, EOS);
    packer.add(lm([5, 6, 7, EOS], [X, 6, 7, EOS]), 0);
    packer.add(lm([8, 9, EOS], [X, 9, EOS]), 1);
    packer.add(lm([10, 11, 12, 13, 14, EOS], [X, X, 12, 13, 14, EOS]), 2);
    expect(packer.available).toBe(3);
    expect(packer.take(2)).toEqual([lm([5, 6, 7, EOS], [X, 6, 7, EOS]), lm([8, 9, EOS, 10], [X, 9, EOS, X])]);
    // Block 3 starts 1 token into example 2; the rest is pending from there.
    expect(packer.pending()).toEqual({ record: 2, offset: 1 });
    expect(packer.flush()).toEqual([lm([11, 12, 13, 14], [X, 12, 13, 14]), lm([EOS], [EOS])]);
    expect(packer.pending()).toBeUndefined();
  });

  it("ends an example that lacks EOS with an EOS separator that carries no loss", () => {
    const packer = new Packer(8, EOS);
    packer.add(lm([5, 6], [5, 6]), 0);
    packer.add(lm([7], [7]), 1);
    expect(packer.flush()).toEqual([lm([5, 6, EOS, 7, EOS], [5, 6, X, 7, X])]);
  });

  it("rebuilds the same pending rows from the pending examples and offset", () => {
    const examples = [lm([1, 2, 3, EOS], [1, 2, 3, EOS]), lm([4, 5, 6, 7, 8, EOS], [4, 5, 6, 7, 8, EOS]), lm([9, EOS], [9, EOS])];
    const whole = new Packer(3, EOS);
    examples.forEach((example, record) => whole.add(example, record));
    whole.take(2);
    const pending = whole.pending();
    expect(pending).toEqual({ record: 1, offset: 2 });
    const resumed = new Packer(3, EOS);
    for (let record = pending!.record; record < examples.length; record++) resumed.add(examples[record]!, record);
    resumed.dropFirst(pending!.offset);
    expect(resumed.flush()).toEqual(whole.flush());
  });
});

describe("collate", () => {
  it("pads unpacked rows on the right to the longest, with mask 0 and no loss on padding", () => {
    const queue = new RowQueue();
    queue.add(lm([5, 6, 7], [X, 6, 7]), 0);
    queue.add(lm([8], [8]), 1);
    const batch = collate(queue.take(2), 1, undefined);
    expect(batch.kind).toBe("lm");
    if (batch.kind !== "lm") return;
    expect([batch.tokens.rows, batch.tokens.seqLength]).toEqual([2, 3]);
    expect([...batch.tokens.inputIds]).toEqual([5, 6, 7, 8, 1, 1]);
    expect([...batch.tokens.attentionMask]).toEqual([1, 1, 1, 1, 0, 0]);
    expect([...batch.tokens.labels]).toEqual([X, 6, 7, 8, X, X]);
  });

  it("pads to a fixed length when given one", () => {
    const batch = collate([lm([5], [5])], 1, 4);
    expect(batch.kind === "lm" && [...batch.tokens.inputIds]).toEqual([5, 1, 1, 1]);
  });

  it("gives chosen and rejected the same length, and classification its classes", () => {
    const pair: EncodedExample = { kind: "preference", chosen: { inputIds: [5, 6], labels: [X, 6] }, rejected: { inputIds: [5, 7, 8, 9], labels: [X, 7, 8, 9] } };
    const preference = collate([pair], 1, undefined);
    expect(preference.kind === "preference" && [[...preference.chosen.inputIds], [...preference.rejected.inputIds]]).toEqual([
      [5, 6, 1, 1],
      [5, 7, 8, 9],
    ]);
    const classification = collate(
      [
        { kind: "classification", inputIds: [5, 6], label: 1 },
        { kind: "classification", inputIds: [7], label: 0 },
      ],
      1,
      undefined,
    );
    expect(classification.kind === "classification" && [...classification.classLabels]).toEqual([1, 0]);
    expect(classification.kind === "classification" && [...classification.tokens.labels]).toEqual([X, X, X, X]);
  });
});
