import * as tf from "@tensorflow/tfjs-core";
import type { ObjectStore } from "../../storage/object-store.ts";
import { StorageError } from "../../storage/object-store.ts";
import { doraMethod, stateFromPeftTensors } from "../methods/dora/model.ts";
import { loraMethod } from "../methods/lora/model.ts";
import type { Adapter } from "../methods/method.ts";
import { loadModel } from "../model/loader.ts";
import type { CausalLM } from "../model/model.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE } from "../output/output.ts";
import { fromPeftTensors } from "../output/merge.ts";
import { Rng } from "../random.ts";
import { readSafetensors, type TensorMap } from "../safetensors/safetensors.ts";
import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import { SCORE_EXPORT_NAME, SCORE_STATE_NAME, ScoreHeadAdapter } from "./score-head.ts";

/**
 * RLAIF's judges: each scores the responses to one prompt, higher meaning better. The pair
 * built from them is (best, worst), so only the order of one prompt's scores matters.
 */
export interface Judge {
  /** For the audit file and errors: "rewardModel", "template" (or "function" in tests). */
  readonly kind: string;
  score(prompt: string, responses: readonly string[]): number[];
  /** Frees what the judge holds (a reward model's copy of the base model). */
  dispose(): void;
}

/** The ids a preference row starts with, as data/encode.ts builds them: BOS (when the tokenizer adds one), then the text. */
export function promptTokens(tokenizer: Tokenizer, text: string): number[] {
  return [...(tokenizer.addBos && tokenizer.bosId !== undefined ? [tokenizer.bosId] : []), ...tokenizer.encode(text)];
}

/**
 * A reward model trained by objective reward (objective reward's output folder): the score of
 * prompt + response at its last token, where the reward model read its pairs' scores; the row
 * is encoded as its training rows were (BOS, the text, EOS).
 */
export class RewardModelJudge implements Judge {
  readonly kind = "rewardModel";

  constructor(
    private readonly reward: ScoreHeadAdapter,
    private readonly tokenizer: Tokenizer,
    /** The model copy the reward adapter is injected into, freed with the judge; none when the caller owns it. */
    private readonly ownedModel?: CausalLM,
  ) {}

  score(prompt: string, responses: readonly string[]): number[] {
    const rows = responses.map((response) => [...promptTokens(this.tokenizer, prompt + response), ...(this.tokenizer.eosId === undefined ? [] : [this.tokenizer.eosId])]);
    const seqLength = Math.max(...rows.map((row) => row.length));
    const ids = new Int32Array(rows.length * seqLength);
    const mask = new Int32Array(rows.length * seqLength);
    rows.forEach((row, r) => {
      ids.set(row, r * seqLength);
      mask.fill(1, r * seqLength, r * seqLength + row.length);
    });
    return tf.tidy(() => {
      const shape: [number, number] = [rows.length, seqLength];
      const hidden = this.reward.forward({ inputIds: tf.tensor2d(ids, shape, "int32"), attentionMask: tf.tensor2d(mask, shape, "int32"), skipOutputHead: true });
      return Array.from(this.reward.scores(hidden, mask).dataSync());
    });
  }

  dispose(): void {
    if (!this.ownedModel) return;
    this.reward.remove();
    this.ownedModel.dispose();
  }
}

/**
 * The base model as a judge (adapters disabled, so the policy being trained does not judge
 * itself): the template with {prompt} and {response} filled in, and as the score the
 * log-odds log p(yes) − log p(no) of the two verdict tokens as the next token.
 */
export class TemplateJudge implements Judge {
  readonly kind = "template";
  private readonly verdictIds: [number, number];

  constructor(
    private readonly adapter: Adapter,
    private readonly tokenizer: Tokenizer,
    private readonly template: string,
    verdictTokens: readonly [string, string],
  ) {
    if (!template.includes("{response}")) throw new Error("spec.objective.rlaif.judge.template: must contain {response}");
    this.verdictIds = verdictTokens.map((text, i) => {
      const ids = tokenizer.encode(text);
      if (ids.length !== 1) {
        throw new Error(`spec.objective.rlaif.judge.verdictTokens[${i}]: "${text}" is ${ids.length} tokens for this tokenizer; each verdict must be exactly one token (mind a leading space)`);
      }
      return ids[0]!;
    }) as [number, number];
    if (this.verdictIds[0] === this.verdictIds[1]) throw new Error("spec.objective.rlaif.judge.verdictTokens: the two verdicts are the same token");
  }

  /** The judging text for one response: placeholders replaced once each, in one pass (a response holding "{prompt}" stays as it is). */
  render(prompt: string, response: string): string {
    return this.template.replace(/\{(prompt|response)\}/g, (_, name: string) => (name === "prompt" ? prompt : response));
  }

  score(prompt: string, responses: readonly string[]): number[] {
    return responses.map((response) => {
      const ids = promptTokens(this.tokenizer, this.render(prompt, response));
      return tf.tidy(() => {
        const logits = this.adapter.forward({ inputIds: tf.tensor2d(ids, [1, ids.length], "int32"), disableAdapters: true });
        const last = tf.reshape(tf.slice(logits, [0, ids.length - 1, 0], [1, 1, -1]), [-1]);
        const logProbabilities = tf.sub(last, tf.logSumExp(last));
        const [yes, no] = tf.gather(logProbabilities, tf.tensor1d(this.verdictIds, "int32")).dataSync();
        return yes! - no!;
      });
    });
  }

  dispose(): void {}
}

/** A judge computed in code; not in the API: tests use it to prefer a property they can check. */
export class FunctionJudge implements Judge {
  readonly kind = "function";
  constructor(private readonly fn: (prompt: string, response: string) => number) {}
  score(prompt: string, responses: readonly string[]): number[] {
    return responses.map((response) => this.fn(prompt, response));
  }
  dispose(): void {}
}

interface PeftConfig {
  peft_type?: string;
  task_type?: string;
  use_dora?: boolean;
  r?: number;
  lora_alpha?: number;
  target_modules?: string[] | string;
  use_rslora?: boolean;
}

/**
 * Loads a reward model folder written by objective reward (a LoRA or DoRA adapter with task_type
 * SEQ_CLS and its score head) onto its own copy of the base model: the policy's adapter sits in
 * the trainer's copy, and one linear module holds one adapter.
 */
export async function loadRewardModelJudge(stores: { adapter: ObjectStore; base: ObjectStore }, tokenizer: Tokenizer): Promise<RewardModelJudge> {
  const where = stores.adapter.uri.replace(/\/+$/, "");
  const read = async (key: string): Promise<Buffer> => {
    try {
      return await stores.adapter.get(key);
    } catch (error) {
      if (error instanceof StorageError && error.code === "NotFound") {
        throw new Error(`spec.objective.rlaif.judge.rewardModel.uri: ${where}/${key} not found; it must be the output folder of a job with objective.type reward`);
      }
      throw error;
    }
  };
  let config: PeftConfig;
  try {
    config = JSON.parse((await read(ADAPTER_CONFIG_FILE)).toString("utf8")) as PeftConfig;
  } catch (error) {
    if (error instanceof SyntaxError) throw new Error(`${where}/${ADAPTER_CONFIG_FILE}: not JSON (${error.message})`);
    throw error;
  }
  if (config.peft_type !== "LORA" || config.task_type !== "SEQ_CLS") {
    throw new Error(
      `spec.objective.rlaif.judge.rewardModel.uri: ${where} holds a ${String(config.peft_type)} adapter with task_type ${String(config.task_type)}; a reward model is a LORA (or DoRA) adapter with task_type SEQ_CLS, as objective reward writes it`,
    );
  }
  const weightsFile = `${where}/${ADAPTER_WEIGHTS_FILE}`;
  const tensors = readSafetensors(await read(ADAPTER_WEIGHTS_FILE), weightsFile).tensors;
  const score = tensors.get(SCORE_EXPORT_NAME);
  if (!score || score.shape.length !== 2 || score.shape[0] !== 1) throw new Error(`${weightsFile}: no one-output score head "${SCORE_EXPORT_NAME}" [1, hidden]; is it a reward model?`);
  const adapterTensors: TensorMap = new Map([...tensors].filter(([name]) => name !== SCORE_EXPORT_NAME));

  const model = await loadModel(stores.base);
  try {
    const context = { rng: Rng.fromSeed(0), baseModelNameOrPath: stores.base.uri, optionsPath: `${where}/${ADAPTER_CONFIG_FILE}`, taskType: "SEQ_CLS" as const };
    const options = { r: config.r, alpha: config.lora_alpha, targetModules: config.target_modules, rsLora: config.use_rslora ?? false };
    const inner = (config.use_dora === true ? doraMethod : loraMethod).inject(model, options, context);
    const reward = new ScoreHeadAdapter(inner, 1, Rng.fromSeed(0));
    const state = config.use_dora === true ? stateFromPeftTensors(adapterTensors, weightsFile) : fromPeftTensors(adapterTensors);
    // The export is [labels, hidden]; the head's state is its kernel [hidden, labels], the same numbers for one label.
    state.set(SCORE_STATE_NAME, { shape: [score.shape[1]!, 1], data: Float32Array.from(score.data) });
    try {
      reward.loadState(state);
    } catch (error) {
      reward.remove();
      throw new Error(`spec.objective.rlaif.judge.rewardModel.uri: ${where} does not fit the base model ${stores.base.uri}: ${(error as Error).message}`);
    }
    return new RewardModelJudge(reward, tokenizer, model);
  } catch (error) {
    model.dispose();
    throw error;
  }
}
