import { describe, expect, it } from "vitest";
import { MemoryObjectStore } from "../data/memory-store.ts";
import type { DatasetOptions } from "../data/options.ts";
import { putTestModel } from "../tokenizer/test-tokenizer.ts";
import { preflight, type PreflightInput } from "./preflight.ts";

const GOOD = { instruction: "Say hi", output: "hi" };

async function setup(): Promise<{ models: MemoryObjectStore; data: MemoryObjectStore; input: PreflightInput }> {
  const models = new MemoryObjectStore("s3://models/base");
  await putTestModel(models, "tiny");
  await models.put("tiny/model.safetensors", "weights");
  const data = new MemoryObjectStore("s3://data/sets");
  data.putLines("train.jsonl", [GOOD, GOOD, GOOD]);
  const dataset: DatasetOptions = { format: "instruction", maxSeqLength: 64 };
  return { models, data, input: { modelStore: models, modelPrefix: "tiny", datasetStore: data, datasetKeys: ["train.jsonl"], dataset } };
}

describe("preflight", () => {
  it("finds nothing wrong with a complete model and a well-formed dataset", async () => {
    const { input } = await setup();
    expect(await preflight(input)).toEqual([]);
  });

  it("reports a missing model folder once, as ModelNotFound naming config.json", async () => {
    const { input } = await setup();
    expect(await preflight({ ...input, modelPrefix: "nothing/here" })).toEqual([
      {
        reason: "ModelNotFound",
        message:
          "s3://models/base/nothing/here/config.json: no such object (the base model's config.json is missing; baseModel.uri must name a Hugging Face model folder)",
      },
    ]);
  });

  it("reports a config.json that does not parse or names an unsupported architecture as InvalidModel", async () => {
    const { models, input } = await setup();
    await models.put("tiny/config.json", "{");
    expect(await preflight(input)).toEqual([{ reason: "InvalidModel", message: expect.stringMatching(/^s3:\/\/models\/base\/tiny\/config\.json: is not valid JSON \(.+\)$/) }]);
    await models.put("tiny/config.json", JSON.stringify({ architectures: ["BertModel"] }));
    const [problem] = await preflight(input);
    expect(problem).toEqual({ reason: "InvalidModel", message: expect.stringContaining('s3://models/base/tiny/config.json: unsupported architecture "BertModel"') });
  });

  it("reports a missing tokenizer.json and missing weights as ModelNotFound", async () => {
    const { models, input } = await setup();
    await models.delete(["tiny/tokenizer.json", "tiny/model.safetensors"]);
    expect(await preflight(input)).toEqual([
      { reason: "ModelNotFound", message: "s3://models/base/tiny/tokenizer.json: no such object (the base model has no tokenizer.json (the fast-tokenizer file))" },
      { reason: "ModelNotFound", message: "s3://models/base/tiny: no *.safetensors weights in the base model folder" },
    ]);
  });

  it("reports a bad line in the sampled lines as InvalidDataset with file:line", async () => {
    const { data, input } = await setup();
    data.putLines("train.jsonl", [GOOD, GOOD, { instruction: "x" }, GOOD]);
    expect(await preflight(input)).toEqual([{ reason: "InvalidDataset", message: 's3://data/sets/train.jsonl:3: missing field "output"' }]);
    expect(await preflight({ ...input, sampleLines: 2 })).toEqual([]);
  });

  it("checks every file of a dataset folder, and a missing file", async () => {
    const { data, input } = await setup();
    data.putLines("folder/a.jsonl", [GOOD]);
    data.putLines("folder/b.jsonl", [GOOD, "not json"]);
    expect(await preflight({ ...input, datasetKeys: ["folder", "missing.jsonl"] })).toEqual([
      { reason: "InvalidDataset", message: expect.stringMatching(/^s3:\/\/data\/sets\/folder\/b\.jsonl:2: invalid JSON \(.+\)$/) },
      {
        reason: "InvalidDataset",
        message: "s3://data/sets/missing.jsonl: no such object, and no *.jsonl files under it as a folder (the dataset file does not exist)",
      },
    ]);
  });

  it("judges the sample by the bad-line policy: skip tolerates what the limits allow", async () => {
    const { data, input } = await setup();
    data.putLines("train.jsonl", [GOOD, GOOD, GOOD, GOOD, "not json", GOOD]);
    expect(await preflight({ ...input, dataset: { ...input.dataset, badLines: "skip", maxBadFraction: 0.2 } })).toEqual([]);
    expect(await preflight({ ...input, dataset: { ...input.dataset, badLines: "skip", maxBadLines: 0 } })).toEqual([
      {
        reason: "InvalidDataset",
        message:
          "too many bad lines in the first 100 lines of s3://data/sets/train.jsonl: 1 of 5 lines read (20.0%), more than maxBadLines (0); the first:\n  s3://data/sets/train.jsonl:5: invalid JSON (Unexpected token 'o', \"not json\" is not valid JSON)",
      },
    ]);
  });

  it("passes blank lines over, as training does, and finds a file of blank lines empty", async () => {
    const { data, input } = await setup();
    data.putLines("train.jsonl", ["", GOOD, "  ", GOOD]);
    data.putLines("blank.jsonl", ["", " "]);
    expect(await preflight(input)).toEqual([]);
    expect(await preflight({ ...input, datasetKeys: ["blank.jsonl"] })).toEqual([{ reason: "InvalidDataset", message: "s3://data/sets/blank.jsonl: the file is empty" }]);
  });

  it("renders chat lines with the model's template, and reports a chat dataset for a model without one", async () => {
    const { models, data, input } = await setup();
    data.putLines("chat.jsonl", [{ messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello" }] }]);
    const chat: PreflightInput = { ...input, datasetKeys: ["chat.jsonl"], dataset: { format: "chat", maxSeqLength: 64 } };
    expect(await preflight(chat)).toEqual([]);
    await models.put("tiny/tokenizer_config.json", JSON.stringify({ eos_token: "<|endoftext|>" }));
    expect(await preflight(chat)).toEqual([{ reason: "InvalidDataset", message: expect.stringMatching(/^the chat format needs the model's chat template/) }]);
  });

  it("reports invalid dataset options", async () => {
    const { input } = await setup();
    expect(await preflight({ ...input, dataset: { format: "instruction", maxSeqLength: 64, fields: { answer: "a" } } })).toEqual([
      { reason: "InvalidDataset", message: 'dataset options: fields.answer: the instruction format has no field "answer" (it has instruction, input, output)' },
    ]);
  });

  it("maps storage errors to StorageAccessDenied and StorageUnavailable", async () => {
    const { models, data, input } = await setup();
    data.failWith("train.jsonl", "AccessDenied");
    models.failWith("tiny/tokenizer.json", "Unavailable");
    expect(await preflight(input)).toEqual([
      { reason: "StorageUnavailable", message: "s3://models/base/tiny/tokenizer.json: injected Unavailable failure" },
      {
        reason: "StorageAccessDenied",
        message: "s3://data/sets/train.jsonl: injected AccessDenied failure (check spec.storage: the credentials must allow reading it)",
      },
    ]);
  });

  it("refuses a method that cannot work on the model's architecture, as InvalidSpec naming the field, before any weight is read", async () => {
    const { input } = await setup();
    expect(await preflight({ ...input, method: { type: "lora", options: { targetModules: ["c_attn"] }, optionsPath: "spec.method.lora" } })).toEqual([
      {
        reason: "InvalidSpec",
        message:
          'spec.method.lora.targetModules: "c_attn" matches no linear module of LlamaForCausalLM; its linear modules are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head',
      },
    ]);
    expect(await preflight({ ...input, method: { type: "ia3", options: { targetModules: ["mlp.c_proj"] }, optionsPath: "spec.method.ia3" } })).toEqual([
      { reason: "InvalidSpec", message: expect.stringMatching(/^spec\.method\.ia3\.targetModules: "mlp\.c_proj" matches no linear module of LlamaForCausalLM/) },
    ]);
    for (const method of [
      { type: "lora", options: {} },
      { type: "dora", options: { targetModules: "all-linear" } },
      { type: "ia3", options: {} },
      { type: "adapter", options: { variant: "pfeiffer" } },
      { type: "full", options: {} },
    ]) {
      expect(await preflight({ ...input, method }), method.type).toEqual([]);
    }
  });

  it("refuses IA3 targets that a Phi-3 (fused qkv_proj) does not have", async () => {
    const { models, input } = await setup();
    const config = JSON.parse((await models.get("tiny/config.json")).toString()) as Record<string, unknown>;
    await models.put("tiny/config.json", JSON.stringify({ ...config, architectures: ["Phi3ForCausalLM"], model_type: "phi3" }));
    const problems = await preflight({ ...input, method: { type: "ia3", options: { targetModules: ["q_proj"] }, optionsPath: "spec.method.ia3" } });
    expect(problems.filter((problem) => problem.reason === "InvalidSpec")).toEqual([
      { reason: "InvalidSpec", message: expect.stringMatching(/^spec\.method\.ia3\.targetModules: "q_proj" matches no linear module of Phi3ForCausalLM/) },
    ]);
  });
});
