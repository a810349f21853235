// The benchmark's models: Hugging Face model folders (config.json + model.safetensors) with
// random weights, written once into a git-ignored cache and reused, so that each benchmark run
// loads them through the trainer's own loader, as a user's model is loaded.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { cacheDir } from "../localcluster/binaries.ts";
import { weightShapes } from "../trainer/model/loader.ts";
import { Rng } from "../trainer/random.ts";
import { writeSafetensors, type TensorMap } from "../trainer/safetensors/safetensors.ts";
import { llamaConfigOf, type BenchConfig } from "./configs.ts";

/** Bumped when the way weights are drawn changes, so that cached folders are made again. */
const WEIGHTS_VERSION = 1;

/** $KUBETUNE_CACHE_DIR/bench/<config>-<hash of everything that decides the files>. */
export function modelFolder(config: BenchConfig): string {
  const key = JSON.stringify([WEIGHTS_VERSION, config.modelConfig, config.dtype, config.weightRange, config.seed]);
  const hash = createHash("sha256").update(key).digest("hex").slice(0, 10);
  return path.join(cacheDir(), "bench", `${config.name}-${hash}`);
}

/** True once writeModelFolder finished (it renames a complete folder into place). */
export function modelFolderExists(dir: string): boolean {
  return existsSync(path.join(dir, "model.safetensors")) && existsSync(path.join(dir, "config.json"));
}

/**
 * Writes the model folder of `config` at `dir`: every weight the architecture has, uniform in
 * [-weightRange, weightRange) from the config's seed, norm scales 1. Written beside `dir` and
 * renamed into place, so an interrupted write leaves no folder that looks complete.
 */
export async function writeModelFolder(config: BenchConfig, dir: string): Promise<void> {
  const rng = Rng.fromSeed(config.seed);
  const tensors: TensorMap = new Map();
  for (const [name, shape] of weightShapes(llamaConfigOf(config))) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith("norm.weight")) data.fill(1);
    else rng.fillUniform(data, -config.weightRange, config.weightRange);
    tensors.set(name, { shape, data });
  }
  const bytes = writeSafetensors(tensors, { dtype: config.dtype, metadata: { generator: "kubetune bench (random weights)" } });
  tensors.clear();
  const partial = `${dir}.partial-${process.pid}`;
  await rm(partial, { recursive: true, force: true });
  await mkdir(partial, { recursive: true });
  await writeFile(path.join(partial, "config.json"), `${JSON.stringify(config.modelConfig, null, 2)}\n`);
  await writeFile(path.join(partial, "model.safetensors"), bytes);
  await rm(dir, { recursive: true, force: true });
  await rename(partial, dir);
}
