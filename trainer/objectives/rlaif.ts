import type { ObjectStore } from "../../storage/object-store.ts";
import { StorageError } from "../../storage/object-store.ts";
import { DataLoader } from "../data/loader.ts";
import type { DatasetOptions } from "../data/options.ts";
import { generate } from "../generate/generate.ts";
import type { Adapter } from "../methods/method.ts";
import { Rng } from "../random.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import { CheckpointMismatchError, train, type CheckpointLocation, type TrainingConfig, type TrainingState } from "../train/loop.ts";
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
 *
 * The learning rate follows one schedule over all rounds × stepsPerRound steps (the job's
 * scheduler, warmup and decay, as for any other job), round k's steps taking its part from
 * step (k − 1) · stepsPerRound; the AdamW moments start afresh each round, as a new trainer per
 * iteration does in TRL's iterative DPO. A round without pairs skips its part of the schedule.
 *
 * The DPO reference: for an adapter method, the model with the adapter disabled, the same base
 * model in every round. Full fine-tuning has no adapter to disable, so each round's reference
 * log-probabilities are precomputed over that round's pairs from the policy as it is at the
 * start of the round (dpo.ts, stored beside the round's checkpoints): iterative DPO as in
 * Xiong et al. 2023 and TRL's iterative examples, where each iteration's reference is the
 * previous iteration's model. Each round then moves the policy at most about as far from where
 * the round began as β allows, rather than from the base model.
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
  /**
   * Responses of fewer tokens (EOS excluded) rank below every longer one, whatever the judge
   * says: never chosen, and rejected first. A guard against reward hacking by a judge that
   * rates a bare "." or a single word well. Default 1 (only an empty response is left out).
   */
  minResponseTokens?: number;
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
  /** Every sampled response with its score, in sampling order; tooShort marks those under minResponseTokens. */
  responses: Array<{ text: string; score: number; tooShort?: true }>;
}

/** A prompt whose responses gave a pair to train on; otherwise chosen and rejected are the same text (a tie). */
const isPair = (pair: RlaifPair) => pair.chosen !== pair.rejected;

export const RLAIF_FOLDER = "rlaif";
export const roundKey = (round: number) => `${RLAIF_FOLDER}/round-${round}.jsonl`;
/** Whose rounds the rlaif/ folder holds: the fingerprint of the run that writes them. */
const RUN_FILE = `${RLAIF_FOLDER}/run.json`;

export type RlaifOutcome =
  | { status: "completed"; state: TrainingState; checkpoint: string | undefined; rounds: RoundSummary[] }
  | { status: "stopped"; state: TrainingState; checkpoint: string };

export interface RoundSummary {
  round: number;
  pairs: number;
  /** Prompts without a pair: every non-empty response ranked the same, or none was long enough to be chosen. */
  ties: number;
  /** Mean over the round's prompts of the mean score of its sampled responses (before the round trains). */
  meanScore: number;
}

export function checkRlaifOptions(options: RlaifOptions): void {
  const positive = (name: keyof RlaifOptions, minimum = 1) => {
    if (!Number.isInteger(options[name]) || options[name]! < minimum) throw new Error(`spec.objective.rlaif.${name}: must be an integer of at least ${minimum}, got ${options[name]}`);
  };
  positive("rounds");
  positive("samplesPerPrompt", 2);
  positive("maxNewTokens");
  positive("stepsPerRound");
  if (options.minResponseTokens !== undefined) {
    positive("minResponseTokens");
    if (options.minResponseTokens > options.maxNewTokens) {
      throw new Error(`spec.objective.rlaif.minResponseTokens: ${options.minResponseTokens} is more than maxNewTokens (${options.maxNewTokens}); no response could be chosen`);
    }
  }
  if (!(options.temperature > 0) || !Number.isFinite(options.temperature)) throw new Error(`spec.objective.rlaif.temperature: must be above 0 (pairs need different samples), got ${options.temperature}`);
  if (!(options.topP > 0 && options.topP <= 1)) throw new Error(`spec.objective.rlaif.topP: must be above 0 and at most 1, got ${options.topP}`);
}

export async function runRlaif(run: RlaifRun): Promise<RlaifOutcome> {
  const { options } = run;
  checkRlaifOptions(options);
  if (run.prompts.length === 0) throw new Error("rlaif: the prompts file holds no prompt");
  // With full fine-tuning, the objective precomputes each round's references when the round's training starts.
  const objective = dpoObjective({ beta: options.beta, labelSmoothing: options.labelSmoothing }, run.adapter);
  const totalSteps = options.rounds * options.stepsPerRound;
  const rounds: RoundSummary[] = [];
  const steps: TrainingState["steps"] = [];
  const evals: TrainingState["evals"] = [];
  let last: { state: TrainingState; checkpoint: string | undefined } | undefined;
  let tokens = 0;
  let trainingSeconds = 0;
  await claimOutput(run);
  for (let round = 1; round <= options.rounds; round++) {
    const offset = (round - 1) * options.stepsPerRound;
    const pairs = (await readPairs(run.output, round)) ?? (await writePairs(run, round, samplePairs(run, round)));
    const scores = pairs.flatMap((pair) => pair.responses.map((response) => response.score));
    const trainable = pairs.filter(isPair);
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
      schedule: { offset, totalSteps },
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
      // Virtual tokens (prompt and prefix tuning) take positions before the prompt's.
      ...(run.maxLength === undefined ? {} : { maxLength: run.maxLength - (run.adapter.virtualTokens ?? 0) }),
    });
    const texts = sampled.map((row) => tokenizer.decode(row, { skipSpecialTokens: true }));
    const scores = run.judge.score(prompt, texts);
    const tooShort = sampled.map((row) => row.length < (options.minResponseTokens ?? 1));
    // Ranked by (long enough, score): a response under minResponseTokens is below every other.
    const above = (a: number, b: number) => (tooShort[a] !== tooShort[b] ? tooShort[b]! : scores[a]! > scores[b]!);
    // Best and worst among the non-empty responses: a response that is EOS at once has no text
    // for a preference record (the loader refuses an empty completion). It keeps its score in the audit.
    const candidates = texts.flatMap((text, i) => (text === "" ? [] : [i]));
    let best = candidates[0] ?? 0;
    let worst = best;
    for (const i of candidates) {
      if (above(i, best)) best = i;
      if (above(worst, i)) worst = i;
    }
    // No pair (every candidate ranked the same, fewer than two, or none long enough to be chosen):
    // chosen = rejected, kept in the audit file and skipped in training.
    const tie = !above(best, worst) || tooShort[best]! || texts[best] === texts[worst];
    return {
      round,
      prompt,
      chosen: texts[best]!,
      rejected: tie ? texts[best]! : texts[worst]!,
      chosenScore: scores[best]!,
      rejectedScore: tie ? scores[best]! : scores[worst]!,
      responses: texts.map((text, i) => ({ text, score: scores[i]!, ...(tooShort[i] ? { tooShort: true as const } : {}) })),
    };
  });
}

/**
 * Writes the round's files: the pairs, which the round trains on, in
 * round-<k>.jsonl; the prompts without a pair (ties) in round-<k>-ties.jsonl, for the audit
 * only, since the preference loader would train on whatever the round's file holds.
 */
async function writePairs(run: RlaifRun, round: number, pairs: RlaifPair[]): Promise<RlaifPair[]> {
  const trainable = pairs.filter(isPair);
  const ties = pairs.filter((pair) => !isPair(pair));
  if (ties.length > 0) await run.output.put(`${RLAIF_FOLDER}/round-${round}-ties.jsonl`, jsonl(ties));
  // Written last: its presence means the round's generation is complete.
  await run.output.put(roundKey(round), jsonl(trainable));
  return pairs;
}

/**
 * A resumed job reuses the pairs files it finds, so they must be this run's: rlaif/run.json
 * records the fingerprint of the run that writes them. Pairs of another run (other settings,
 * model or data, or files older than run.json) would be trained on silently; they are refused.
 */
async function claimOutput(run: RlaifRun): Promise<void> {
  const where = `${run.output.uri.replace(/\/+$/, "")}/${RUN_FILE}`;
  const text = await readText(run.output, RUN_FILE);
  if (text !== undefined) {
    let fingerprint: unknown;
    try {
      fingerprint = (JSON.parse(text) as { fingerprint?: unknown }).fingerprint;
    } catch {
      fingerprint = undefined;
    }
    if (fingerprint === run.fingerprint) return;
    throw new CheckpointMismatchError(
      `${where}: the RLAIF rounds in this output were written by a job with other settings, model or data; point output.uri somewhere new, or delete its ${RLAIF_FOLDER}/ folder to start over`,
    );
  }
  if ((await readText(run.output, roundKey(1))) !== undefined) {
    throw new CheckpointMismatchError(`${where} is missing but ${RLAIF_FOLDER}/ holds rounds of an earlier job; point output.uri somewhere new, or delete its ${RLAIF_FOLDER}/ folder to start over`);
  }
  await run.output.put(RUN_FILE, JSON.stringify({ fingerprint: run.fingerprint }) + "\n");
}

async function readText(store: ObjectStore, key: string): Promise<string | undefined> {
  try {
    return (await store.get(key)).toString("utf8");
  } catch (error) {
    if (error instanceof StorageError && error.code === "NotFound") return undefined;
    throw error;
  }
}

async function readPairs(store: ObjectStore, round: number): Promise<RlaifPair[] | undefined> {
  const text = await readText(store, roundKey(round));
  if (text === undefined) return undefined;
  const ties = (await readText(store, `${RLAIF_FOLDER}/round-${round}-ties.jsonl`)) ?? "";
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
