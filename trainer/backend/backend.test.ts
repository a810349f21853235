import { createRequire } from "node:module";
import * as tf from "@tensorflow/tfjs-core";
import { describe, expect, it } from "vitest";
import { BackendError, selectBackend } from "./backend.ts";

function nodeGpuInstalled(): boolean {
  try {
    createRequire(import.meta.url).resolve("@tensorflow/tfjs-node-gpu");
    return true;
  } catch {
    return false;
  }
}

describe("selectBackend", () => {
  it('picks wasm, the fastest CPU backend, for "cpu" and reports its name', async () => {
    const listeners = () => [...process.listeners("uncaughtException"), ...process.listeners("unhandledRejection")];
    const before = listeners();
    expect(await selectBackend("cpu")).toBe("wasm");
    expect(tf.getBackend()).toBe("wasm");
    // The wasm glue's rethrowing process handlers are removed, so crashes print the real error.
    expect(listeners()).toEqual(before);
  });

  it.skipIf(nodeGpuInstalled())('falls back to wasm under "auto" when tfjs-node-gpu is not installed', async () => {
    expect(await selectBackend("auto")).toBe("wasm");
  });

  it.skipIf(nodeGpuInstalled())('fails with what to do when "gpu" is required but tfjs-node-gpu is absent', async () => {
    const failure = selectBackend("gpu");
    await expect(failure).rejects.toBeInstanceOf(BackendError);
    await expect(failure).rejects.toThrow(/trainer\.backend is "gpu" but @tensorflow\/tfjs-node-gpu could not be loaded .*use the GPU trainer image/);
  });
});
