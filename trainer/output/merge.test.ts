import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LocalObjectStore } from "../../storage/local-store.ts";
import { selectBackend } from "../backend/backend.ts";
import { loraMethod, type LoraAdapter } from "../methods/lora/model.ts";
import { loadModel } from "../model/loader.ts";
import { Rng } from "../random.ts";
import { readSafetensors, type TensorMap } from "../safetensors/safetensors.ts";
import { TINY_GPT2, TINY_LLAMA, writeTinyModel, type TinyModel } from "../testing/tiny-models.ts";
import { MergeError, mergeAdapter } from "./merge.ts";
import { adapterFiles } from "./output.ts";

let scratch: string;
const models: TinyModel[] = [];

beforeAll(async () => {
  await selectBackend("cpu");
  scratch = await mkdtemp(path.join(os.tmpdir(), "kubetune-merge-test-"));
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
  for (const model of models) await rm(model.dir, { recursive: true, force: true });
});

/** A trained-looking LoRA adapter (random A and B) written as PEFT files, and the merge the trainer itself computes. */
async function adapterFolder(config: Record<string, unknown>, options: Record<string, unknown>, name: string): Promise<{ base: TinyModel; dir: string; expected: TensorMap }> {
  const base = await writeTinyModel(config, { seed: 5 });
  models.push(base);
  const model = await loadModel(base.store);
  const adapter = loraMethod.inject(model, options, { rng: Rng.fromSeed(1), baseModelNameOrPath: base.dir }) as LoraAdapter;
  const rng = Rng.fromSeed(2);
  const state = adapter.saveState();
  for (const tensor of state.values()) tensor.data = rng.fillUniform(new Float32Array(tensor.data.length), -0.5, 0.5);
  adapter.loadState(state);
  const dir = path.join(scratch, name);
  const store = new LocalObjectStore(dir);
  for (const [file, content] of Object.entries(adapterFiles(adapter))) await store.put(file, content);
  const expected = adapter.merge();
  adapter.remove();
  model.dispose();
  return { base, dir, expected };
}

describe("mergeAdapter", () => {
  it.each([
    ["Llama", TINY_LLAMA, { r: 4, alpha: 8, targetModules: ["q_proj", "v_proj", "down_proj"] }],
    ["GPT-2 (Conv1D weights)", TINY_GPT2, { r: 2, alpha: 4, rsLora: true, targetModules: ["c_attn"] }],
  ])("folds a PEFT LoRA folder into the %s base exactly as the trainer merges, with the base's other files", async (label, config, options) => {
    const { base, dir, expected } = await adapterFolder(config, options, `adapter-${label.split(" ")[0]}`);
    const out = path.join(scratch, `merged-${label.split(" ")[0]}`);
    const result = await mergeAdapter({ adapter: new LocalObjectStore(dir), base: base.store, out: new LocalObjectStore(out) });
    expect(result.modules.length).toBeGreaterThan(0);
    const merged = readSafetensors(await readFile(path.join(out, "model.safetensors")), "model.safetensors").tensors;
    expect([...merged.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, tensor] of expected) expect(merged.get(name)!.data, name).toEqual(tensor.data);
    expect(JSON.parse(await readFile(path.join(out, "config.json"), "utf8"))).toEqual(config);
    expect(result.manifest.files.map((file) => file.name).sort()).toEqual(["config.json", "model.safetensors"]);
  });

  it("writes shards and model.safetensors.index.json, as save_pretrained does, when the model exceeds the shard size", async () => {
    const { base, dir, expected } = await adapterFolder(TINY_LLAMA, { r: 4, alpha: 8, targetModules: ["q_proj", "v_proj"] }, "adapter-sharded");
    const out = path.join(scratch, "merged-sharded");
    const total = [...expected.values()].reduce((sum, tensor) => sum + tensor.data.length * 4, 0);
    const result = await mergeAdapter({ adapter: new LocalObjectStore(dir), base: base.store, out: new LocalObjectStore(out) }, { maxShardBytes: Math.ceil(total / 3) });
    const index = JSON.parse(await readFile(path.join(out, "model.safetensors.index.json"), "utf8")) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    expect(index.metadata.total_size).toBe(total);
    const shards = [...new Set(Object.values(index.weight_map))].sort();
    expect(shards.length).toBeGreaterThanOrEqual(3);
    expect(shards[0]).toMatch(new RegExp(`^model-00001-of-${String(shards.length).padStart(5, "0")}\\.safetensors$`));
    const merged: TensorMap = new Map();
    for (const shard of shards) {
      for (const [name, tensor] of readSafetensors(await readFile(path.join(out, shard)), shard).tensors) {
        expect(index.weight_map[name]).toBe(shard);
        merged.set(name, tensor);
      }
    }
    expect([...merged.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, tensor] of expected) expect(merged.get(name)!.data, name).toEqual(tensor.data);
    expect(result.manifest.files.map((file) => file.name).sort()).toEqual(["config.json", ...shards, "model.safetensors.index.json"].sort());
  });

  it("refuses a folder that is not a PEFT adapter, naming the missing file", async () => {
    const base = await writeTinyModel(TINY_LLAMA, { seed: 5 });
    models.push(base);
    await expect(mergeAdapter({ adapter: new LocalObjectStore(path.join(scratch, "nothing")), base: base.store, out: new LocalObjectStore(path.join(scratch, "out-none")) })).rejects.toThrow(
      /nothing\/adapter_config\.json not found: ADAPTER must be a PEFT adapter folder/,
    );
  });

  it("refuses adapter types it cannot fold, and an adapter that does not fit the base", async () => {
    const { dir } = await adapterFolder(TINY_LLAMA, { r: 2 }, "adapter-dora");
    const config = JSON.parse(await readFile(path.join(dir, "adapter_config.json"), "utf8")) as Record<string, unknown>;
    await writeFile(path.join(dir, "adapter_config.json"), JSON.stringify({ ...config, peft_type: "PREFIX_TUNING" }));
    const gpt2 = await writeTinyModel(TINY_GPT2, { seed: 5 });
    models.push(gpt2);
    const out = new LocalObjectStore(path.join(scratch, "out-dora"));
    await expect(mergeAdapter({ adapter: new LocalObjectStore(dir), base: gpt2.store, out })).rejects.toThrow(/a PREFIX_TUNING adapter; kubetune merge folds LoRA, DoRA and IA3 adapters/);
    await writeFile(path.join(dir, "adapter_config.json"), JSON.stringify({ ...config, peft_type: "BOTTLENECK_ADAPTER" }));
    await expect(mergeAdapter({ adapter: new LocalObjectStore(dir), base: gpt2.store, out })).rejects.toThrow(/nonlinearity cannot be folded/);
    await writeFile(path.join(dir, "adapter_config.json"), JSON.stringify({ ...config, use_dora: true }));
    await expect(mergeAdapter({ adapter: new LocalObjectStore(dir), base: gpt2.store, out })).rejects.toThrow(/does not fit the base model/);
    await writeFile(path.join(dir, "adapter_config.json"), JSON.stringify(config));
    const refused = mergeAdapter({ adapter: new LocalObjectStore(dir), base: gpt2.store, out });
    await expect(refused).rejects.toBeInstanceOf(MergeError);
    await expect(refused).rejects.toThrow(/does not fit the base model .*q_proj/);
  });
});
