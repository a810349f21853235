import type { ObjectStore } from "../../storage/object-store.ts";
import { StorageError } from "../../storage/object-store.ts";
import { DataLoader } from "../data/loader.ts";
import type { DatasetOptions } from "../data/options.ts";
import { generate } from "../generate/generate.ts";
import type { Adapter } from "../methods/method.ts";
import { Rng } from "../random.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import { train, type CheckpointLocation, type TrainingConfig, type TrainingState } from "../train/loop.ts";
import type { ProgressListener } from "../train/progress.ts";
import { dpoObjective } from "./dpo.ts";
import { promptTokens, type Judge } from "./rlaif-judge.ts";

/**
 * RLAIF (Lee et al. 2023, with DPO in place of PPO, as the alignment comparison in the seed's
 * fourth paper does): each round samples responses to every prompt from the current policy,
 * has a judge score them, takes the best and the worst as a preference pair, and trains DPO on
 * those pairs (dpo.ts: the same loss, reference and metrics) for stepsPerRound steps.
 *
 * A round's pairs are written to the output as rlaif/round-<k>.jsonl before it trains: the audit
 * file, and the round's training data (the preference format reads prompt, chosen and rejected
 * and ignores the rest). Each round trains with the training loop under its own checkpoint
 * folder and fingerprint, so a resumed job finds a finished round's final checkpoint and only
 * restores it, finds an unfinished round's pairs file and latest checkpoint and continues it
 * step for step, and generates only the rounds that have no pairs file yet. Generation draws
 * from a generator seeded by the job's seed and the round, so a round's pairs do not depend on
 * how many attempts came before.
 */
export interface RlaifOptions {
  rounds: number;
  samplesPerPrompt: number;
  temperature: number;
  topP: number;
  maxNewTokens: number;
  stepsPerRound: number;
  beta: number;
  labelSmoothing: number;
}

export interface RlaifRun {
  adapter: Adapter;
  tokenizer: Tokenizer;
  /** The adapter's dropout generator, checkpointed by the loop. */
  rng: Rng;
  seed: number;
  prompts: readonly string[];
  judge: Judge;
  options: RlaifOptions;
  /** The job's dataset options with format preference: how a round's pairs are encoded (maxSeqLength, template). */
  dataset: DatasetOptions;
  training: TrainingConfig;
  /** Where the audit files go (the job's output store). */
  output: ObjectStore;
  checkpoints: CheckpointLocation;
  fingerprint: string;
  backend: string;
  /** The most positions a row may take (GPT-2's n_positions). */
  maxLength?: number;
  onProgress?: ProgressListener;
  signal?: AbortSignal;
}

/** One line of rlaif/round-<k>.jsonl. */
export interface RlaifPair {
  round: number;
  prompt: string;
  chosen: string;
  rejected: string;
  chosenScore: number;
  rejectedScore: number;
  /** Every sampled response with its score, in sampling order. */
  responses: Array<{ text: string; score: number }>;
}

export const RLAIF_FOLDER = "rlaif";
export const roundKey = (round: number) => `${RLAIF_FOLDER}/round-${round}.jsonl`;

export type RlaifOutcome =
  | { status: "completed"; state: TrainingState; checkpoint: string | undefined; rounds: RoundSummary[] }
  | { status: "stopped"; state: TrainingState; checkpoint: string };

export interface RoundSummary {
  round: number;
  pairs: number;
  /** Prompts without a pair: every non-empty response scored the same. */
  ties: number;
  /** Mean over the round's prompts of the mean score of its sampled responses (before the round trains). */
  meanScore: number;
}

export function checkRlaifOptions(options: RlaifOptions, adapter: Pick<Adapter, "type" | "trainsBaseWeights" | "virtualTokens">): void {
  const positive = (name: keyof RlaifOptions, minimum = 1) => {
    if (!Number.isInteger(options[name]) || options[name] < minimum) throw new Error(`spec.objective.rlaif.${name}: must be an integer of at least ${minimum}, got ${options[name]}`);
  };
  positive("rounds");
  positive("samplesPerPrompt", 2);
  positive("maxNewTokens");
  positive("stepsPerRound");
  if (!(options.temperature > 0) || !Number.isFinite(options.temperature)) throw new Error(`spec.objective.rlaif.temperature: must be above 0 (pairs need different samples), got ${options.temperature}`);
  if (!(options.topP > 0 && options.topP <= 1)) throw new Error(`spec.objective.rlaif.topP: must be above 0 and at most 1, got ${options.topP}`);
  if (adapter.virtualTokens) throw new Error(`spec.method.type: rlaif generates with a key/value cache, which does not hold method ${adapter.type}'s virtual tokens yet; use a method such as lora`);
}

export async function runRlaif(run: RlaifRun): Promise<RlaifOutcome> {
  const { options } = run;
  checkRlaifOptions(options, run.adapter);
  if (run.prompts.length === 0) throw new Error("rlaif: the prompts file holds no prompt");
  // dpoObjective refuses full fine-tuning (no adapter-disabled reference) with the reason.
  const objective = dpoObjective({ beta: options.beta, labelSmoothing: options.labelSmoothing }, run.adapter);
  const totalSteps = options.rounds * options.stepsPerRound;
  const rounds: RoundSummary[] = [];
  const steps: TrainingState["steps"] = [];
  const evals: TrainingState["evals"] = [];
  let last: { state: TrainingState; checkpoint: string | undefined } | undefined;
  let tokens = 0;
  let trainingSeconds = 0;
  for (let round = 1; round <= options.rounds; round++) {
    const offset = (round - 1) * options.stepsPerRound;
    const pairs = (await readPairs(run.output, round)) ?? (await writePairs(run, round, samplePairs(run, round)));
    const scores = pairs.flatMap((pair) => pair.responses.map((response) => response.score));
    const trainable = pairs.filter((pair) => pair.chosenScore > pair.rejectedScore);
    rounds.push({ round, pairs: trainable.length, ties: pairs.length - trainable.length, meanScore: mean(scores) });
    // A round whose responses all tied trains nothing: the pairs file holds none to learn from.
    if (trainable.length === 0) continue;
    // The job's fields name the prompts file's; the pairs file has the preference format's own names.
    const { fields: _promptFields, ...encoding } = run.dataset;
    const data = new DataLoader({ store: run.output, train: [roundKey(round)] }, { ...encoding, format: "preference" }, run.tokenizer);
    const outcome = await train({
      adapter: run.adapter,
      rng: run.rng,
      data,
      config: { ...run.training, epochs: undefined, maxSteps: options.stepsPerRound, evalEverySteps: undefined },
      checkpoints: { ...run.checkpoints, folder: `${run.checkpoints.folder}-round-${round}` },
      fingerprint: `${run.fingerprint}-round-${round}`,
      backend: run.backend,
      objective,
      // Steps count over all rounds, as one run of rounds × stepsPerRound steps.
      ...(run.onProgress ? { onProgress: offsetSteps(run.onProgress, offset, totalSteps) } : {}),
      ...(run.signal ? { signal: run.signal } : {}),
    });
    steps.push(...outcome.state.steps.map((step) => ({ ...step, step: step.step + offset })));
    evals.push(...outcome.state.evals.map((record) => ({ ...record, step: record.step + offset })));
    tokens += outcome.state.tokens;
    trainingSeconds += outcome.state.trainingSeconds;
    const state = { ...outcome.state, step: outcome.state.step + offset, totalSteps, steps: [...steps], evals: [...evals], tokens, trainingSeconds };
    if (outcome.status === "stopped") return { status: "stopped", state, checkpoint: outcome.checkpoint };
    last = { state, checkpoint: outcome.checkpoint };
  }
  if (!last) throw new Error("rlaif: no round had a pair to train on (every prompt's responses scored the same); raise temperature or samplesPerPrompt, or check the judge");
  return { status: "completed", ...last, rounds };
}

/** A round's pairs: N samples per prompt from the policy, scored, best against worst. */
function samplePairs(run: RlaifRun, round: number): RlaifPair[] {
  const { options, tokenizer } = run;
  // One generator per round, from the seed: the same pairs whatever attempt generates them.
  const rng = Rng.fromSeed((run.seed * 1_000_003 + round) >>> 0);
  return run.prompts.map((prompt) => {
    const ids = promptTokens(tokenizer, prompt);
    const sampled = generate(run.adapter, ids, {
      samples: options.samplesPerPrompt,
      maxNewTokens: options.maxNewTokens,
      temperature: options.temperature,
      topP: options.topP,
      rng,
      ...(tokenizer.eosId === undefined ? {} : { eosId: tokenizer.eosId }),
      ...(run.maxLength === undefined ? {} : { maxLength: run.maxLength }),
    });
    const texts = sampled.map((row) => tokenizer.decode(row, { skipSpecialTokens: true }));
    const scores = run.judge.score(prompt, texts);
    // Best and worst among the non-empty responses: a response that is EOS at once has no text
    // for a preference record (the loader refuses an empty completion). It keeps its score in the audit.
    const candidates = texts.flatMap((text, i) => (text === "" ? [] : [i]));
    let best = candidates[0] ?? 0;
    let worst = best;
    for (const i of candidates) {
      if (scores[i]! > scores[best]!) best = i;
      if (scores[i]! < scores[worst]!) worst = i;
    }
    // No pair (every candidate scored the same, or fewer than two): chosen = rejected, kept in the audit file and skipped in training.
    const tie = !(scores[best]! > scores[worst]!);
    return {
      round,
      prompt,
      chosen: texts[best]!,
      rejected: tie ? texts[best]! : texts[worst]!,
      chosenScore: scores[best]!,
      rejectedScore: tie ? scores[best]! : scores[worst]!,
      responses: texts.map((text, i) => ({ text, score: scores[i]! })),
    };
  });
}

/**
 * Writes the round's files: the pairs with a score difference, which the round trains on, in
 * round-<k>.jsonl; the prompts without a pair (ties) in round-<k>-ties.jsonl, for the audit
 * only, since the preference loader would train on whatever the round's file holds.
 */
async function writePairs(run: RlaifRun, round: number, pairs: RlaifPair[]): Promise<RlaifPair[]> {
  const trainable = pairs.filter((pair) => pair.chosenScore > pair.rejectedScore);
  const ties = pairs.filter((pair) => !(pair.chosenScore > pair.rejectedScore));
  if (ties.length > 0) await run.output.put(`${RLAIF_FOLDER}/round-${round}-ties.jsonl`, jsonl(ties));
  // Written last: its presence means the round's generation is complete.
  await run.output.put(roundKey(round), jsonl(trainable));
  return pairs;
}

async function readPairs(store: ObjectStore, round: number): Promise<RlaifPair[] | undefined> {
  const read = async (key: string) => {
    try {
      return (await store.get(key)).toString("utf8");
    } catch (error) {
      if (error instanceof StorageError && error.code === "NotFound") return undefined;
      throw error;
    }
  };
  const text = await read(roundKey(round));
  if (text === undefined) return undefined;
  const ties = (await read(`${RLAIF_FOLDER}/round-${round}-ties.jsonl`)) ?? "";
  return [...parse(text), ...parse(ties)];
}

const jsonl = (pairs: readonly RlaifPair[]) => pairs.map((pair) => JSON.stringify(pair)).join("\n") + (pairs.length > 0 ? "\n" : "");
const parse = (text: string) =>
  text
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => JSON.parse(line) as RlaifPair);
const mean = (values: readonly number[]) => (values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length);

function offsetSteps(listener: ProgressListener, offset: number, totalSteps: number): ProgressListener {
  return (event) => {
    const shifted: Record<string, unknown> = { ...event };
    if (typeof shifted.step === "number") shifted.step = (shifted.step as number) + offset;
    if (typeof shifted.totalSteps === "number") shifted.totalSteps = totalSteps;
    listener(shifted as typeof event);
  };
}
