import type { Command } from "commander";
import { openStore } from "../../storage/open-store.ts";
import { action, UserError } from "../cluster.ts";

interface MergeFlags {
  base: string;
  out: string;
  endpoint?: string;
  region?: string;
  maxShardSize?: string;
}

export function registerMerge(program: Command): void {
  program
    .command("merge")
    .description("Fold a LoRA, DoRA or IA3 adapter into its base model and write a whole model folder (config, tokenizer, model.safetensors) that loads without PEFT.")
    .argument("<adapter>", "the adapter folder: a job's output.uri (s3://...) or a local folder with adapter_config.json and adapter_model.safetensors")
    .requiredOption("--base <model>", "the base model folder the adapter was trained on (s3://... or local)")
    .requiredOption("--out <dir>", "where to write the merged model (s3://... or local); its files are replaced")
    .option("--endpoint <url>", "S3 endpoint for s3:// URIs (default: $AWS_ENDPOINT_URL, else AWS)")
    .option("--region <region>", "S3 region (default: $AWS_REGION)")
    .option("--max-shard-size <size>", "largest weight file, as save_pretrained's max_shard_size (e.g. 5GB, 500MB); a larger model is written as shards with model.safetensors.index.json", "5GB")
    .addHelpText(
      "after",
      `
Examples:
  $ kubetune merge out/quickstart --base examples/quickstart/model --out out/quickstart-merged
  $ kubetune merge s3://kubetune/outputs/quickstart --base s3://kubetune/quickstart/model --out ./merged

S3 credentials come from the usual AWS environment variables (the dev cluster's exports set them).`,
    )
    .action(
      action(async (adapterUri: string, flags: MergeFlags) => {
        const endpoint = flags.endpoint ?? process.env.AWS_ENDPOINT_URL;
        const options = { ...(endpoint ? { endpoint, forcePathStyle: true } : {}), ...((flags.region ?? process.env.AWS_REGION) ? { region: flags.region ?? process.env.AWS_REGION } : {}) };
        // TensorFlow.js loads only for this command.
        const { MergeError, mergeAdapter } = await import("../../trainer/output/merge.ts");
        const { parseShardSize } = await import("../../trainer/output/shards.ts");
        let maxShardBytes: number;
        try {
          maxShardBytes = parseShardSize(flags.maxShardSize ?? "5GB", "--max-shard-size");
        } catch (error) {
          throw new UserError((error as Error).message);
        }
        try {
          const stores = { adapter: openStore(adapterUri, options), base: openStore(flags.base, options), out: openStore(flags.out, options) };
          const result = await mergeAdapter(stores, { maxShardBytes });
          console.log(`merged ${result.modules.length} LoRA modules into ${flags.out}: ${result.manifest.files.map((file) => file.name).join(", ")}`);
        } catch (error) {
          if (error instanceof MergeError) throw new UserError(error.message);
          throw error;
        }
      }),
    );
}
