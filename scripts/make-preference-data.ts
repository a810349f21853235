/**
 * Writes the preference pairs of the local DPO and reward-model examples, made from the
 * quickstart's own questions, answers and stories (quickstart-text.ts), so they may be
 * redistributed with the project:
 *
 * examples/quickstart/data/preference.jsonl (examples/local/dpo.yaml):
 *
 * Each pair asks a quickstart question in its Question/Answer layout; the chosen answer states
 * the fact, the rejected one is the same sentence with its last word swapped for the answer to
 * another question of the same kind ("The opposite of hot is small."). The base model has read
 * the facts (its corpus states them) but never the layout, so DPO has something to learn: rank
 * the true answer above a fluent wrong one.
 *
 * examples/quickstart/data/prompts.jsonl (examples/local/rlaif.yaml): every fourth quickstart
 * question alone ({"prompt": ...}), for RLAIF to sample answers to and have a judge rank.
 *
 *   node --import tsx scripts/make-preference-data.ts
 */
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Rng } from "../trainer/random.ts";
import { corpusDocuments, instructionRecords } from "./quickstart-text.ts";

const DATA = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "examples", "quickstart", "data");

/** The kind of question an answer belongs to, so that a wrong answer is a plausible one. */
function kindOf(answer: string): string {
  if (answer.startsWith(" The opposite of")) return "opposite";
  if (answer.includes(" says ")) return "sound";
  if (answer.includes(" comes after ")) return "number";
  return "color";
}

/** The answer's word: the last one ("... is cold."), or the first for numbers (" 1 comes after 0."). */
const LAST_WORD = /(\S+)\.$/;
const FIRST_WORD = /^ (\S+)/;
const answerWord = (answer: string) => (kindOf(answer) === "number" ? FIRST_WORD : LAST_WORD);

const records = instructionRecords();
const wordsByKind = new Map<string, string[]>();
for (const { completion } of records) {
  const words = wordsByKind.get(kindOf(completion)) ?? [];
  const word = answerWord(completion).exec(completion)![1]!;
  if (!words.includes(word)) words.push(word);
  wordsByKind.set(kindOf(completion), words);
}

const rng = Rng.fromSeed(2026);
const pairs = records.map(({ prompt, completion }) => {
  const pattern = answerWord(completion);
  const right = pattern.exec(completion)![1]!;
  const wrongWords = wordsByKind.get(kindOf(completion))!.filter((word) => word !== right);
  const wrong = wrongWords[rng.nextInt(wrongWords.length)]!;
  const rejected = pattern === LAST_WORD ? completion.replace(LAST_WORD, `${wrong}.`) : completion.replace(FIRST_WORD, ` ${wrong}`);
  return { prompt, chosen: completion, rejected };
});

// Story sentences without a question or a fact in them: "<Name> <verb> a <thing> in <place>."
const digressions = corpusDocuments(400, 7)
  .flatMap((document) => document.split(/(?<=\.) /))
  .filter((sentence) => /^[A-Z][a-z]+ (sees|finds|has|likes|wants|holds|takes|gives) an? [a-z]+ (in|at|near|on) the [a-z]+\.$/.test(sentence));
const unique = [...new Set(digressions)];
if (unique.length < 20) throw new Error(`only ${unique.length} story sentences found; has quickstart-text.ts changed?`);
const rewardPairs = records.map(({ prompt, completion }) => ({ prompt, chosen: completion, rejected: ` ${unique[rng.nextInt(unique.length)]!}` }));

for (const [file, lines] of [
  ["preference.jsonl", pairs],
  ["reward.jsonl", rewardPairs],
] as const) {
  await writeFile(path.join(DATA, file), lines.map((pair) => JSON.stringify(pair)).join("\n") + "\n");
  console.log(`wrote ${lines.length} preference pairs to ${path.relative(process.cwd(), path.join(DATA, file))}`);
}

// RLAIF's prompts: a spread of the questions (every kind), few enough for a round to take seconds.
const prompts = records.filter((_, i) => i % 4 === 0).map(({ prompt }) => ({ prompt }));
await writeFile(path.join(DATA, "prompts.jsonl"), prompts.map((record) => JSON.stringify(record)).join("\n") + "\n");
console.log(`wrote ${prompts.length} prompts to ${path.relative(process.cwd(), path.join(DATA, "prompts.jsonl"))}`);
