import { describe, expect, it } from "vitest";
import { metaspaceTokenizerFiles, testTokenizer } from "../tokenizer/test-tokenizer.ts";
import { Tokenizer } from "../tokenizer/tokenizer.ts";
import { encodeExample, IGNORE_INDEX, type TokenSequence } from "./encode.ts";
import { parseLine } from "./records.ts";
import { ALPACA_TEMPLATE, type DatasetFormat, type FieldMapping } from "./options.ts";

/** Llama-2 / Mistral style: "▁" prepended to the text, so a part tokenized alone starts a word the whole text does not. */
const metaspace = Tokenizer.fromSources(metaspaceTokenizerFiles());

function encode(line: unknown, format: DatasetFormat, tokenizer: Tokenizer, fields: FieldMapping = {}): TokenSequence {
  const parsed = parseLine(JSON.stringify(line), { format, fields, instructionTemplate: { withInput: "{instruction}\n\n{input}", withoutInput: "{instruction}" }, classLabels: undefined, tokenizer });
  if (!parsed.example) throw new Error(parsed.problem);
  const encoded = encodeExample(parsed.example, tokenizer, { maxSeqLength: undefined });
  if (encoded?.kind !== "lm") throw new Error("expected a language-model example");
  return encoded.sequence;
}

/** The tokens (as strings) of each run of consecutive positions that carry a loss. */
function lossRuns(sequence: TokenSequence, tokenizer: Tokenizer): string[][] {
  const runs: string[][] = [];
  sequence.labels.forEach((label, i) => {
    if (label === IGNORE_INDEX) return;
    expect(label).toBe(sequence.inputIds[i]);
    const token = tokenizer.idToToken(label)!;
    if (i > 0 && sequence.labels[i - 1] !== IGNORE_INDEX) runs.at(-1)!.push(token);
    else runs.push([token]);
  });
  return runs;
}

describe("encoding an example whole, as inference tokenizes it", () => {
  const BOS = metaspace.bosId!;
  const EOS = metaspace.eosId!;

  it("gives a prompt and completion the tokens of their whole text, with loss on the completion's (SentencePiece-style tokenizer)", () => {
    const prompt = "Question: What is the capital of France?\nAnswer:";
    const sequence = encode({ instruction: prompt, output: " Paris." }, "instruction", metaspace);
    const whole = metaspace.encode(`${prompt} Paris.`);
    expect(sequence.inputIds).toEqual([BOS, ...whole, EOS]);
    // Tokenized alone, " Paris." would be "▁" "▁Paris.": a token sequence the model never sees at inference.
    expect(lossRuns(sequence, metaspace)).toEqual([["▁Paris.", "</s>"]]);
    expect(sequence.labels.slice(0, whole.length)).toEqual(Array<number>(whole.length).fill(IGNORE_INDEX));
  });

  it("does not start the completion with a word boundary the whole text does not have", () => {
    const sequence = encode({ instruction: "Question: What is the capital of France?\nAnswer:\n", output: "Paris." }, "instruction", metaspace);
    expect(sequence.inputIds).toEqual([BOS, ...metaspace.encode("Question: What is the capital of France?\nAnswer:\nParis."), EOS]);
    expect(lossRuns(sequence, metaspace)).toEqual([["P", "a", "r", "i", "s", ".", "</s>"]]);
  });

  it("puts the loss on a token that spans the end of the prompt, since it holds characters of the completion", () => {
    const sequence = encode({ instruction: "What is the capital of Fra", output: "nce?" }, "instruction", metaspace);
    expect(sequence.inputIds).toEqual([BOS, ...metaspace.encode("What is the capital of France?"), EOS]);
    expect(lossRuns(sequence, metaspace)).toEqual([["▁France?", "</s>"]]);
  });

  it("gives a conversation the tokens of its whole rendering, with loss on each assistant turn through its end-of-turn token", () => {
    const messages = [
      { role: "user", content: "What is the capital of France?" },
      { role: "assistant", content: "Paris." },
      { role: "user", content: "Question: What is the capital?" },
      { role: "assistant", content: "Paris" },
    ];
    const sequence = encode({ messages }, "chat", metaspace);
    expect(sequence.inputIds).toEqual(metaspace.encode(metaspace.applyChatTemplate(messages)));
    // The newline after <|im_end|> ("▁", "<0x0A>" here) separates turns and carries no loss, as in TRL.
    const turn = (...letters: string[]) => [...letters, "<|im_end|>"];
    expect(lossRuns(sequence, metaspace)).toEqual([turn("P", "a", "r", "i", "s", "."), turn("P", "a", "r", "i", "s")]);
  });

  it("keeps byte-level tokenizers' tokens and masks as they were", () => {
    const tokenizer = testTokenizer();
    const prompt = ALPACA_TEMPLATE.withoutInput.replace("{instruction}", "What is the capital of France?");
    const sequence = encode({ instruction: prompt, output: "Paris." }, "instruction", tokenizer);
    const promptIds = tokenizer.encode(prompt);
    const outputIds = tokenizer.encode("Paris.");
    expect(sequence.inputIds).toEqual([tokenizer.bosId, ...promptIds, ...outputIds, tokenizer.eosId]);
    expect(sequence.labels).toEqual([...Array<number>(1 + promptIds.length).fill(IGNORE_INDEX), ...outputIds, tokenizer.eosId]);
  });
});
