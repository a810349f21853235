import { Rng } from "../trainer/random.ts";

/**
 * The quickstart's text, all of it written for this project (so it may be redistributed under
 * the project's license): a small table of facts, a pretraining corpus that states them in
 * plain sentences, and as questions and answers people ask each other, among short made-up
 * stories, and an instruction dataset that asks for them in a Question/Answer layout the
 * corpus never uses.
 *
 * That split is the point of the quickstart: the base model knows that the opposite of hot
 * is cold but has never seen "Question: ... Answer:"; LoRA teaches it the layout, and the
 * before/after sample shows the difference.
 */

const OPPOSITES: [string, string][] = [
  ["hot", "cold"], ["big", "small"], ["up", "down"], ["day", "night"], ["fast", "slow"],
  ["happy", "sad"], ["open", "closed"], ["light", "dark"], ["wet", "dry"], ["full", "empty"],
  ["early", "late"], ["hard", "soft"], ["loud", "quiet"], ["high", "low"], ["long", "short"],
  ["near", "far"], ["strong", "weak"], ["thick", "thin"], ["clean", "dirty"], ["in", "out"],
  ["left", "right"], ["black", "white"], ["top", "bottom"], ["first", "last"], ["push", "pull"],
  ["young", "old"], ["good", "bad"], ["rich", "poor"],
];

const COLORS: [string, string][] = [
  ["the sky", "blue"], ["grass", "green"], ["snow", "white"], ["coal", "black"], ["the sun", "yellow"],
  ["a banana", "yellow"], ["an orange", "orange"], ["a cherry", "red"], ["a leaf", "green"], ["a cloud", "white"],
  ["a lemon", "yellow"], ["the sea", "blue"], ["a tomato", "red"], ["milk", "white"], ["a frog", "green"],
  ["a rose", "red"], ["a crow", "black"], ["corn", "yellow"], ["a plum", "purple"], ["chocolate", "brown"],
];

const SOUNDS: [string, string][] = [
  ["dog", "woof"], ["cat", "meow"], ["cow", "moo"], ["duck", "quack"], ["sheep", "baa"], ["pig", "oink"],
  ["horse", "neigh"], ["lion", "roar"], ["owl", "hoot"], ["bee", "buzz"], ["frog", "croak"], ["mouse", "squeak"],
  ["snake", "hiss"], ["wolf", "howl"], ["bird", "tweet"], ["goat", "bleat"], ["hen", "cluck"], ["donkey", "bray"],
];

const NAMES = ["Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Max", "Zoe", "Leo", "Emma", "Jack", "Nora"];
const PLACES = ["the park", "the garden", "the house", "the farm", "the river", "the forest", "the school", "the beach", "the town", "the hill"];
const OBJECTS = ["ball", "book", "kite", "hat", "cup", "box", "bike", "boat", "apple", "drum", "bag", "toy"];
const VERBS = ["sees", "finds", "has", "likes", "wants", "holds", "takes", "gives"];
const TIMES = ["In the morning", "At noon", "In the evening", "One day", "After lunch", "On Sunday", "Later", "Then"];

function pick<T>(items: readonly T[], rng: Rng): T {
  return items[rng.nextInt(items.length)]!;
}

function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** The sentence forms the corpus states each fact in. */
function factSentences(rng: Rng): string[] {
  const [a, b] = pick(OPPOSITES, rng);
  const [thing, color] = pick(COLORS, rng);
  const [animal, sound] = pick(SOUNDS, rng);
  const n = rng.nextInt(20);
  return [
    pick([`The opposite of ${a} is ${b}.`, `The opposite of ${b} is ${a}.`, `${capitalize(a)} and ${b} are opposites.`], rng),
    pick([`${capitalize(thing)} is ${color}.`, `The color of ${thing} is ${color}.`], rng),
    pick([`A ${animal} says ${sound}.`, `The ${animal} says ${sound}.`, `The sound of a ${animal} is ${sound}.`], rng),
    pick([`${n + 1} comes after ${n}.`, `After ${n} comes ${n + 1}.`], rng),
  ];
}

/**
 * A question and its answer as two people in a story say them. The corpus knows questions,
 * in this form only; the fine-tuning teaches the Question/Answer layout.
 */
function dialogue(rng: Rng): string {
  const [asker, answerer] = [pick(NAMES, rng), pick(NAMES, rng)];
  const [a, b] = pick(OPPOSITES, rng);
  const [thing, color] = pick(COLORS, rng);
  const [animal, sound] = pick(SOUNDS, rng);
  const n = rng.nextInt(20);
  const [question, answer] = pick(
    [
      [`What is the opposite of ${a}?`, `The opposite of ${a} is ${b}.`],
      [`What is the opposite of ${b}?`, `The opposite of ${b} is ${a}.`],
      [`What color is ${thing}?`, `${capitalize(thing)} is ${color}.`],
      [`What does a ${animal} say?`, `A ${animal} says ${sound}.`],
      [`What comes after ${n}?`, `${n + 1} comes after ${n}.`],
    ] as const,
    rng,
  );
  return `${asker} asks, "${question}" ${answerer} says, "${answer}"`;
}

function storySentence(rng: Rng): string {
  const name = pick(NAMES, rng);
  const [thing, color] = pick(COLORS, rng);
  const [animal, sound] = pick(SOUNDS, rng);
  const [a] = pick(OPPOSITES, rng);
  return pick(
    [
      `${name} ${pick(VERBS, rng)} a ${pick(OBJECTS, rng)} in ${pick(PLACES, rng)}.`,
      `${pick(TIMES, rng)}, ${name} goes to ${pick(PLACES, rng)}.`,
      `${name} sees a ${animal} and the ${animal} says ${sound}.`,
      `${name} looks at ${thing}, and ${thing} is ${color}.`,
      `The day is ${a}, and ${name} is happy.`,
      `${name} and ${pick(NAMES, rng)} play with a ${pick(OBJECTS, rng)}.`,
      `${name} counts to ${2 + rng.nextInt(9)} and then stops.`,
    ],
    rng,
  );
}

/** Pretraining documents: short paragraphs that mix facts into little stories. */
export function corpusDocuments(count: number, seed: number): string[] {
  const rng = Rng.fromSeed(seed);
  const documents: string[] = [];
  for (let i = 0; i < count; i++) {
    const sentences: string[] = [];
    const length = 4 + rng.nextInt(5);
    for (let j = 0; j < length; j++) {
      const kind = rng.nextFloat();
      sentences.push(kind < 0.5 ? pick(factSentences(rng), rng) : kind < 0.75 ? dialogue(rng) : storySentence(rng));
    }
    documents.push(sentences.join(" "));
  }
  return documents;
}

export interface InstructionRecord {
  prompt: string;
  completion: string;
}

/** The prompt format the fine-tuning teaches, which the corpus never shows. */
export function questionPrompt(question: string): string {
  return `Question: ${question}\nAnswer:`;
}

/**
 * Every question the instruction dataset asks, with its answer, in a fixed order: each fact in
 * two phrasings, so that the adapter learns the format rather than one sentence.
 */
export function instructionRecords(): InstructionRecord[] {
  const records: InstructionRecord[] = [];
  const add = (questions: string[], answer: string) => {
    for (const question of questions) records.push({ prompt: questionPrompt(question), completion: ` ${answer}` });
  };
  for (const [a, b] of OPPOSITES) {
    add([`What is the opposite of ${a}?`, `Name the opposite of ${a}.`], `The opposite of ${a} is ${b}.`);
    add([`What is the opposite of ${b}?`, `Name the opposite of ${b}.`], `The opposite of ${b} is ${a}.`);
  }
  for (const [thing, color] of COLORS) add([`What color is ${thing}?`, `What is the color of ${thing}?`], `${capitalize(thing)} is ${color}.`);
  for (const [animal, sound] of SOUNDS) add([`What does a ${animal} say?`, `What sound does a ${animal} make?`], `A ${animal} says ${sound}.`);
  for (let n = 0; n < 20; n++) add([`What comes after ${n}?`, `Which number comes after ${n}?`], `${n + 1} comes after ${n}.`);
  return records;
}
