import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as tf from "@tensorflow/tfjs-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { selectBackend } from "../backend/backend.ts";
import { generate } from "../generate/generate.ts";
import { fullMethod } from "../methods/full/model.ts";
import { loraMethod } from "../methods/lora/model.ts";
import type { Adapter } from "../methods/method.ts";
import { loadModel } from "../model/loader.ts";
import type { CausalLM } from "../model/model.ts";
import { Rng } from "../random.ts";
import { TestFolderStore } from "../testing/folder-store.ts";
import { loadTokenizer, type Tokenizer } from "../tokenizer/tokenizer.ts";
import type { TrainingConfig } from "../train/loop.ts";
import { adapterFiles } from "../output/output.ts";
import { FunctionJudge, loadRewardModelJudge, promptTokens, TemplateJudge } from "./rlaif-judge.ts";
import { runRlaif, type RlaifOptions, type RlaifPair, type RlaifRun } from "./rlaif.ts";
import { ScoreHeadAdapter } from "./score-head.ts";

/**
 * RLAIF end to end on the quickstart model, with a judge in code that prefers answers that
 * end with a full stop (a property the test can count): over the rounds the policy's answers hold it more
 * often than the base model's.
 */
const QUICKSTART_MODEL = path.join(path.dirname(fileURLToPath(import.meta.url)), "../../examples/quickstart/model");
const PROMPTS = ["Question: What is the opposite of hot?\nAnswer:", "Question: What color is the sky?\nAnswer:", "Question: What does a cat say?\nAnswer:", "Question: What comes after 3?\nAnswer:"];
/** The property: the answer is a finished sentence, ending in a full stop (before EOS or the token limit). */
const holdsWord = (response: string) => (response.trimEnd().endsWith(".") ? 1 : 0);

const OPTIONS: RlaifOptions = { rounds: 4, samplesPerPrompt: 6, temperature: 1, topP: 1, maxNewTokens: 10, stepsPerRound: 4, beta: 0.5, labelSmoothing: 0 };
const TRAINING: TrainingConfig = {
  batchSize: 4,
  gradientAccumulation: 1,
  learningRate: 0.005,
  scheduler: "constant",
  weightDecay: 0,
  maxGradNorm: 1,
  checkpointEverySteps: 4,
  checkpointKeep: 2,
};

/** Full fine-tuning moves every weight: a tenth of LoRA's learning rate, as the API's guidance has it. */
const FULL_LEARNING_RATE = 0.0005;

const dirs: string[] = [];
let tokenizer: Tokenizer;
beforeAll(async () => {
  await selectBackend("cpu");
  tokenizer = await loadTokenizer(new TestFolderStore(QUICKSTART_MODEL), "");
});
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function withPolicy<T>(body: (adapter: Adapter, model: CausalLM) => Promise<T>): Promise<T> {
  const model = await loadModel(new TestFolderStore(QUICKSTART_MODEL));
  const adapter = loraMethod.inject(model, { r: 8, alpha: 16, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }, { rng: Rng.fromSeed(1), baseModelNameOrPath: "quickstart" });
  try {
    return await body(adapter, model);
  } finally {
    adapter.remove();
    model.dispose();
  }
}

async function rlaifRun(adapter: Adapter, dir: string, overrides: Partial<RlaifRun> = {}): Promise<RlaifRun> {
  const store = new TestFolderStore(dir);
  return {
    adapter,
    tokenizer,
    rng: Rng.fromSeed(9),
    seed: 9,
    prompts: PROMPTS,
    judge: new FunctionJudge((_, response) => holdsWord(response)),
    options: OPTIONS,
    dataset: { format: "preference", maxSeqLength: 48 },
    training: TRAINING,
    output: store,
    checkpoints: { store, folder: "checkpoints", owner: "rlaiftest" },
    fingerprint: "rlaif-test",
    backend: "test",
    ...overrides,
  };
}

/** The share of sampled answers that hold the word, from a fixed generator. */
function wordRate(adapter: Adapter, disableAdapters: boolean): number {
  const rng = Rng.fromSeed(77);
  let hits = 0;
  let total = 0;
  for (const prompt of PROMPTS) {
    const rows = generate(adapter, promptTokens(tokenizer, prompt), { samples: 16, maxNewTokens: 10, temperature: 1, topP: 1, rng, disableAdapters, ...(tokenizer.eosId === undefined ? {} : { eosId: tokenizer.eosId }) });
    for (const row of rows) {
      hits += holdsWord(tokenizer.decode(row, { skipSpecialTokens: true }));
      total++;
    }
  }
  return hits / total;
}

const readJsonl = async (file: string) =>
  (await readFile(file, "utf8"))
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => JSON.parse(line) as RlaifPair);

describe("RLAIF", () => {
  it("raises the rate of the property the judge prefers over the rounds, and writes the pairs for audit", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "rlaif-"));
    dirs.push(dir);
    await withPolicy(async (adapter) => {
      const before = wordRate(adapter, true);
      const outcome = await runRlaif(await rlaifRun(adapter, dir));
      expect(outcome.status).toBe("completed");
      if (outcome.status !== "completed") return;
      expect(outcome.state.step).toBe(OPTIONS.rounds * OPTIONS.stepsPerRound);
      const after = wordRate(adapter, false);
      console.log(`rlaif: word rate ${before} -> ${after}; per round ${outcome.rounds.map((r) => r.meanScore.toFixed(3)).join(", ")}`);
      expect(after).toBeGreaterThan(before + 0.2);
      // The rounds sample from the policy as it trains: the later rounds' answers already hold the word more often.
      expect(outcome.rounds.at(-1)!.meanScore).toBeGreaterThan(outcome.rounds[0]!.meanScore);

      for (let round = 1; round <= OPTIONS.rounds; round++) {
        const pairs = await readJsonl(path.join(dir, "rlaif", `round-${round}.jsonl`));
        expect(pairs.length).toBeGreaterThan(0);
        for (const pair of pairs) {
          expect(pair.round).toBe(round);
          expect(PROMPTS).toContain(pair.prompt);
          expect(pair.responses).toHaveLength(OPTIONS.samplesPerPrompt);
          // chosen is a best response and rejected a worst one, by the judge's own scores (of the non-empty responses).
          const scores = pair.responses.filter((response) => response.text !== "").map((response) => response.score);
          expect(pair.chosenScore).toBe(Math.max(...scores));
          expect(pair.rejectedScore).toBe(Math.min(...scores));
          expect(pair.chosenScore).toBeGreaterThan(pair.rejectedScore);
          expect(holdsWord(pair.chosen)).toBe(1);
          expect(holdsWord(pair.rejected)).toBe(0);
          expect(pair.responses.map((response) => response.text)).toContain(pair.chosen);
        }
      }
    });
  }, 600_000);

  it("resumes a stopped run without redoing finished rounds, and ends with the same adapter", async () => {
    const straightDir = await mkdtemp(path.join(tmpdir(), "rlaif-straight-"));
    const resumedDir = await mkdtemp(path.join(tmpdir(), "rlaif-resumed-"));
    dirs.push(straightDir, resumedDir);
    const options = { ...OPTIONS, rounds: 2, stepsPerRound: 4, samplesPerPrompt: 4, maxNewTokens: 6 };
    // One schedule over both rounds, warmup and decay: a resumed round must take its part of it, not restart it.
    const training: TrainingConfig = { ...TRAINING, scheduler: "linear", warmupRatio: 0.25 };
    const straight = await withPolicy(async (adapter) => {
      await runRlaif(await rlaifRun(adapter, straightDir, { options, training }));
      return [...adapter.saveState().values()].map((tensor) => [...tensor.data]);
    });
    // Stopped during round 2's first step (the loop checkpoints at the end of that step) ...
    const controller = new AbortController();
    let roundTwoStarted = false;
    const stopped = await withPolicy(async (adapter) =>
      runRlaif(
        await rlaifRun(adapter, resumedDir, {
          options,
          training,
          signal: controller.signal,
          onProgress: (event) => {
            if (event.event === "step" && event.step === options.stepsPerRound + 1) controller.abort();
            // Round 2's loop starts at its own step 0, reported after round 1's steps.
            if (event.event === "start" && event.step === options.stepsPerRound && event.totalSteps === 2 * options.stepsPerRound) roundTwoStarted = true;
          },
        }),
      ),
    );
    expect(stopped.status).toBe("stopped");
    expect(stopped.state.step).toBe(options.stepsPerRound + 1);
    expect(roundTwoStarted).toBe(true);
    const roundOne = await readFile(path.join(resumedDir, "rlaif", "round-1.jsonl"), "utf8");
    // ... then resumed: round 1's pairs file is not written again, and no step of round 1 is taken again.
    const steps: number[] = [];
    const resumed = await withPolicy(async (adapter) => {
      const outcome = await runRlaif(await rlaifRun(adapter, resumedDir, { options, training, onProgress: (event) => event.event === "step" && steps.push(event.step) }));
      expect(outcome.status).toBe("completed");
      return [...adapter.saveState().values()].map((tensor) => [...tensor.data]);
    });
    expect(steps).toEqual([6, 7, 8]);
    expect(await readFile(path.join(resumedDir, "rlaif", "round-1.jsonl"), "utf8")).toBe(roundOne);
    expect(await readFile(path.join(resumedDir, "rlaif", "round-2.jsonl"), "utf8")).toBe(await readFile(path.join(straightDir, "rlaif", "round-2.jsonl"), "utf8"));
    expect(resumed).toEqual(straight);
  }, 600_000);

  it("ranks responses under minResponseTokens below every longer one: never chosen, rejected first", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "rlaif-short-"));
    dirs.push(dir);
    // A judge that a degenerate answer games: the shorter, the better.
    const judge = new FunctionJudge((_, response) => -response.length);
    const options = { ...OPTIONS, rounds: 1, stepsPerRound: 1, samplesPerPrompt: 6, maxNewTokens: 8, minResponseTokens: 4 };
    await withPolicy(async (adapter) => {
      const outcome = await runRlaif(await rlaifRun(adapter, dir, { options, judge }));
      expect(outcome.status).toBe("completed");
    });
    const pairs = await readJsonl(path.join(dir, "rlaif", "round-1.jsonl"));
    const tokens = (text: string) => tokenizer.encode(text, { addSpecialTokens: false }).length;
    expect(pairs.length).toBeGreaterThan(0);
    let shortRejected = 0;
    for (const pair of pairs) {
      expect(tokens(pair.chosen)).toBeGreaterThanOrEqual(4);
      const chosen = pair.responses.find((response) => response.text === pair.chosen)!;
      expect(chosen.tooShort).toBeUndefined();
      // The best-scored long enough response is chosen.
      const long = pair.responses.filter((response) => !response.tooShort && response.text !== "");
      expect(pair.chosenScore).toBe(Math.max(...long.map((response) => response.score)));
      const short = pair.responses.filter((response) => response.tooShort && response.text !== "");
      if (short.length > 0) {
        // A short response is rejected, although the judge scored it above the chosen one.
        expect(pair.responses.find((response) => response.text === pair.rejected)!.tooShort).toBe(true);
        expect(pair.rejectedScore).toBe(Math.min(...short.map((response) => response.score)));
        expect(pair.rejectedScore).toBeGreaterThan(pair.chosenScore);
        shortRejected++;
      }
    }
    expect(shortRejected).toBeGreaterThan(0);
  }, 600_000);

  it("with full fine-tuning, raises the property's rate too, each round's reference the policy at its start", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "rlaif-full-"));
    dirs.push(dir);
    const model = await loadModel(new TestFolderStore(QUICKSTART_MODEL));
    const adapter = fullMethod.inject(model, undefined, { rng: Rng.fromSeed(1), baseModelNameOrPath: "quickstart" });
    try {
      const before = wordRate(adapter, false);
      const outcome = await runRlaif(await rlaifRun(adapter, dir, { training: { ...TRAINING, learningRate: FULL_LEARNING_RATE } }));
      expect(outcome.status).toBe("completed");
      if (outcome.status !== "completed") return;
      const after = wordRate(adapter, false);
      console.log(`rlaif (full): word rate ${before} -> ${after}; per round ${outcome.rounds.map((r) => r.meanScore.toFixed(3)).join(", ")}`);
      expect(after).toBeGreaterThan(before + 0.2);
      // Every round starts with the policy equal to its reference: margin 0 at the round's first step.
      const firsts = outcome.state.steps.filter((step) => (step.step - 1) % OPTIONS.stepsPerRound === 0);
      expect(firsts).toHaveLength(OPTIONS.rounds);
      for (const step of firsts) expect(step.preference!.rewardsMargins).toBeCloseTo(0, 3);
    } finally {
      adapter.remove();
      model.dispose();
    }
  }, 600_000);
});

describe("template judge", () => {
  it("scores by the base model's log-odds of the verdict tokens, with the adapter disabled", async () => {
    await withPolicy(async (adapter, model) => {
      const judge = new TemplateJudge(adapter, tokenizer, "Question: Is this answer right? {prompt}{response}\nAnswer:", [" right", " cold"]);
      const [yes, no] = [tokenizer.encode(" right")[0]!, tokenizer.encode(" cold")[0]!];
      const responses = [" The opposite of hot is cold.", " The opposite of hot is blue."];
      const scores = judge.score(PROMPTS[0]!, responses);
      // By hand: the full forward of the rendered text, log-softmax at its last position.
      const expected = responses.map((response) => {
        const ids = promptTokens(tokenizer, `Question: Is this answer right? ${PROMPTS[0]}${response}\nAnswer:`);
        const row = tf.tidy(() => Array.from(model.forward({ inputIds: tf.tensor2d(ids, [1, ids.length], "int32"), disableAdapters: true }).dataSync()).slice((ids.length - 1) * model.config.vocabSize));
        return row[yes]! - row[no]!;
      });
      scores.forEach((score, i) => expect(score).toBeCloseTo(expected[i]!, 4));
      expect(scores[0]).not.toBeCloseTo(scores[1]!, 4);
      expect(judge.render("P{response}", "R {prompt}")).toContain("R {prompt}");
      expect(() => new TemplateJudge(adapter, tokenizer, "{prompt}", [" right", " cold"])).toThrow(/must contain \{response\}/);
      expect(() => new TemplateJudge(adapter, tokenizer, "{response}", [" yes", " cold"])).toThrow(/verdictTokens\[0\].*exactly one token/);
    });
  });
});

describe("reward model judge", () => {
  it("loads a reward model's output folder with its score head and scores as the trained model does", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "rlaif-reward-"));
    dirs.push(dir);
    // One linear module holds one adapter: the reward model is built on a model of its own here too.
    const model = await loadModel(new TestFolderStore(QUICKSTART_MODEL));
    const inner = loraMethod.inject(model, { r: 4, alpha: 8, targetModules: ["q_proj", "v_proj"] }, { rng: Rng.fromSeed(2), baseModelNameOrPath: "quickstart", taskType: "SEQ_CLS" });
    const reward = new ScoreHeadAdapter(inner, 1, Rng.fromSeed(4));
    const rng = Rng.fromSeed(6);
    const state = reward.saveState();
    for (const [name, tensor] of state) if (name.endsWith("lora_B")) state.set(name, { shape: tensor.shape, data: Float32Array.from(tensor.data, () => 0.2 * rng.normal()) });
    reward.loadState(state);
    const responses = [" The opposite of hot is cold.", " Max sees a kite.", " cold"];
    try {
      for (const [name, content] of Object.entries(adapterFiles(reward))) await writeFile(path.join(dir, name), content);
      // By hand: each row alone, BOS (none for this tokenizer) + prompt + response + EOS, the head at its last token.
      const expected = responses.map((response) => {
        const ids = [...promptTokens(tokenizer, PROMPTS[0]! + response), tokenizer.eosId!];
        return tf.tidy(() => {
          const hidden = reward.forward({ inputIds: tf.tensor2d(ids, [1, ids.length], "int32"), skipOutputHead: true });
          return reward.scores(hidden, new Int32Array(ids.length).fill(1)).dataSync()[0]!;
        });
      });
      const judge = await loadRewardModelJudge({ adapter: new TestFolderStore(dir), base: new TestFolderStore(QUICKSTART_MODEL) }, tokenizer);
      try {
        // Scored as one right-padded batch: the same numbers as row by row.
        const scores = judge.score(PROMPTS[0]!, responses);
        scores.forEach((score, i) => expect(score).toBeCloseTo(expected[i]!, 4));
        expect(new Set(scores.map((score) => score.toFixed(4))).size).toBe(3);
      } finally {
        judge.dispose();
      }
      await expect(loadRewardModelJudge({ adapter: new TestFolderStore(path.join(dir, "missing")), base: new TestFolderStore(QUICKSTART_MODEL) }, tokenizer)).rejects.toThrow(
        /rewardModel\.uri: .*adapter_config\.json not found/,
      );
    } finally {
      reward.remove();
      model.dispose();
    }
  });
});
