import type { Command } from "commander";
import { readFileSync } from "node:fs";
import { applyDefaults, validate } from "../../api/index.ts";
import { openStore } from "../../storage/open-store.ts";
import { preflight } from "../../trainer/preflight/preflight.ts";
import { planJob } from "../../trainer/train/plan.ts";

/**
 * `kubetune preflight`: what the operator's CPU-only preflight pod runs before a GPU is held.
 * Reads the job's spec from KUBETUNE_JOB_SPEC (or a manifest file), checks the model,
 * tokenizer and dataset, and prints one `Reason: message` line per problem; exit 1 if any.
 */
export function registerPreflight(program: Command): void {
  program
    .command("preflight")
    .description("Check that a job's model, tokenizer and dataset exist and parse (the operator runs this before the trainer).")
    .addHelpText("after", "\nExamples:\n  $ kubetune preflight examples/quickstart.yaml\n  $ kubetune preflight job.yaml --sample-lines 1000")
    .argument("[file]", "a FineTuneJob manifest; the KUBETUNE_JOB_SPEC environment variable when omitted")
    .option("--sample-lines <n>", "lines checked at the start of each dataset file", "100")
    .action(async (file: string | undefined, flags: { sampleLines: string }) => {
      let spec: unknown;
      if (file) {
        const { parse } = await import("yaml");
        spec = (parse(readFileSync(file, "utf8")) as { spec?: unknown }).spec;
      } else if (process.env.KUBETUNE_JOB_SPEC) {
        spec = JSON.parse(process.env.KUBETUNE_JOB_SPEC);
      } else {
        console.error("InvalidSpec: no job: pass a manifest file or set KUBETUNE_JOB_SPEC");
        process.exit(2);
      }
      const problems = validate({ apiVersion: "kubetune.io/v1alpha1", kind: "FineTuneJob", metadata: { name: "preflight" }, spec });
      if (problems.length) {
        for (const problem of problems) console.error(`InvalidSpec: ${problem.path}: ${problem.message}`);
        process.exit(1);
      }
      const plan = planJob(applyDefaults(spec as never));
      const storage = plan.storage;
      const modelLocation = plan.model.uri;
      const found = await preflight({
        modelStore: openStore(modelLocation, storage),
        modelPrefix: "",
        architecture: plan.model.architecture,
        datasetStore: openStore(plan.dataset.storeUri, storage),
        datasetKeys: [plan.dataset.train, ...(plan.dataset.eval ? [plan.dataset.eval] : [])],
        dataset: plan.dataset.options,
        method: plan.method,
        sampleLines: Number(flags.sampleLines),
      });
      if (found.length === 0) {
        console.log("preflight passed: the model, tokenizer and dataset exist and parse");
        return;
      }
      for (const problem of found) console.error(`${problem.reason}: ${problem.message}`);
      process.exit(1);
    });
}
