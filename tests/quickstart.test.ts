import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { applyDefaults } from "../api/index.ts";
import { loadManifest } from "../cli/commands/run.ts";
import { openStore } from "../storage/open-store.ts";
import { selectBackend } from "../trainer/backend/backend.ts";
import { loadModel } from "../trainer/model/loader.ts";
import { preflight } from "../trainer/preflight/preflight.ts";
import { loadTokenizer } from "../trainer/tokenizer/tokenizer.ts";
import { planJob } from "../trainer/train/plan.ts";

const examples = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../examples");

/** The committed quickstart (npm run make:quickstart) must stay loadable and consistent with its manifest. */
describe("examples/quickstart", () => {
  it("holds a model of a few MB, its tokenizer, and a dataset whose every line parses", async () => {
    const loaded = await loadManifest(path.join(examples, "quickstart.yaml"));
    if ("problems" in loaded) throw new Error(loaded.problems.join("\n"));
    const plan = planJob(applyDefaults(loaded.job.spec), { baseDir: examples });
    const modelStore = openStore(plan.model.uri);
    const problems = await preflight({
      modelStore,
      modelPrefix: "",
      datasetStore: openStore(plan.dataset.storeUri),
      datasetKeys: [plan.dataset.train],
      dataset: plan.dataset.options,
      sampleLines: 10_000,
    });
    expect(problems).toEqual([]);

    await selectBackend("cpu");
    const model = await loadModel(modelStore);
    const tokenizer = await loadTokenizer(modelStore, "");
    expect(tokenizer.vocabSize).toBeLessThanOrEqual(model.config.vocabSize);
    expect(model.parameterCount()).toBeGreaterThan(500_000);
    expect((await stat(path.join(plan.model.uri, "model.safetensors"))).size).toBeLessThan(8 * 2 ** 20);
    model.dispose();

    const lines = (await readFile(path.join(plan.dataset.storeUri, plan.dataset.train), "utf8")).trim().split("\n");
    expect(lines.length).toBeGreaterThanOrEqual(200);
    expect(JSON.parse(lines[0]!)).toEqual({ prompt: expect.stringMatching(/^Question: .*\nAnswer:$/), completion: expect.stringMatching(/^ \S/) });
  });
});
