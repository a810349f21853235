import type { V1Pod } from "@kubernetes/client-node";
import { rm } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resourcePath } from "../../kube/client.ts";
import type { S3ObjectStore } from "../../storage/s3-store.ts";
import { readSafetensors } from "../../trainer/safetensors/safetensors.ts";
import type { TinyJob } from "../../trainer/testing/tiny-job.ts";
import { createNamespace, eventually, kubeClient } from "./harness.ts";
import { eventsOf, getJob, jobsPath, KUBETUNE_IMAGE, startOperatorHarness, tinyTraining, trainingJob, waitForPhase, type OperatorHarness } from "./operator-harness.ts";

/**
 * The whole loop with real parts only: a FineTuneJob applied to the real API server, the
 * operator creating preflight and trainer pods, the local pod runner running the real
 * `kubetune preflight` and `kubetune train` as processes, and MinIO holding the model, the
 * dataset, the checkpoints and the adapter.
 */
describe("the full loop: apply, preflight, train, checkpoint, adapter in S3", () => {
  const client = kubeClient();
  let namespace: string;
  let harness: OperatorHarness;
  let tiny: TinyJob;
  let store: S3ObjectStore;

  beforeAll(async () => {
    namespace = await createNamespace("loop");
    harness = await startOperatorHarness([namespace], { defaultImage: KUBETUNE_IMAGE, preflight: true });
    ({ tiny, store } = await tinyTraining("loop"));
  });

  afterAll(async () => {
    await harness?.stop();
    if (tiny) await rm(tiny.dir, { recursive: true, force: true });
  });

  const manifest = (name: string) => trainingJob({ tiny, store }, namespace, name);

  const adapter = (name: string) => store.get(`outputs/${name}/adapter_model.safetensors`);

  it("trains a job from apply to Succeeded, with progress in status and the adapter in S3", async () => {
    await client.create(jobsPath(namespace), manifest("reference"));
    const done = await waitForPhase(namespace, "reference", ["Succeeded", "Failed"], 150_000);
    expect(done.status?.conditions?.find((condition) => condition.type === "Failed")).toBeUndefined();
    expect(done.status).toMatchObject({ phase: "Succeeded", attempts: 1, progress: { step: 40, totalSteps: 40, percent: 100 } });
    expect(done.status?.conditions?.find((condition) => condition.type === "PreflightChecked")).toMatchObject({ status: "True" });
    expect(done.status?.progress?.loss).toBeGreaterThan(0);
    // What the trainer computed on, and why, as it reported at start: in status and as a metric.
    const backend = done.status?.backend;
    expect(backend).toMatchObject({ name: expect.stringMatching(/^(tensorflow|wasm)$/), device: "cpu", reason: expect.stringContaining("trainer.backend") });
    const metrics = await fetch(`http://127.0.0.1:${harness.operator.probePort}/metrics`).then((response) => response.text());
    expect(metrics).toContain(`kubetune_job_backend_info{namespace="${namespace}",job="reference",backend="${backend!.name}",device="cpu"} 1`);
    expect(done.status?.lastCheckpoint?.uri).toContain("/outputs/reference/checkpoints/step-");
    const names = done.status?.outputs?.files?.map((file) => file.name) ?? [];
    expect(names).toEqual(expect.arrayContaining(["adapter_config.json", "adapter_model.safetensors", "training_metrics.json"]));
    const tensors = readSafetensors(await adapter("reference"), "adapter_model.safetensors").tensors;
    expect([...tensors.keys()]).toContain("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  });

  it("retries a trainer killed mid-run; the retry resumes from its checkpoint and writes the same adapter", async () => {
    await client.create(jobsPath(namespace), manifest("killed"));
    const podKey = `${namespace}/killed-train-1`;
    // Kill the trainer's whole process group once its first checkpoint is published.
    await eventually(
      "the first checkpoint of attempt 1",
      async () => {
        const logs = harness.runner.logs(namespace, "killed-train-1");
        if (!logs.includes('"event":"checkpoint"')) return undefined;
        process.kill(-harness.runner.processes().get(podKey)!, "SIGKILL");
        return true;
      },
      120_000,
    );
    const done = await waitForPhase(namespace, "killed", ["Succeeded", "Failed"], 150_000);
    expect(done.status).toMatchObject({ phase: "Succeeded", attempts: 2, failedAttempts: 1 });
    const retrying = (await eventsOf(namespace, "killed")).find((event) => event.reason === "Retrying");
    expect(retrying?.message).toMatch(/attempt 1 ended .*attempt 2 resumes from the last checkpoint/);
    const jsonLines = harness.runner.logs(namespace, "killed-train-2").split("\n").filter((line) => line.startsWith("{"));
    const events = jsonLines.map((line) => JSON.parse(line) as { event: string; resumedFrom?: string });
    expect(events[0]).toMatchObject({ event: "backend" });
    expect(events.find((event) => event.event === "start")).toMatchObject({ event: "start", resumedFrom: expect.stringMatching(/\/outputs\/killed\/checkpoints\/step-000000[1-3]0-[a-z0-9]+$/) });
    expect((await adapter("killed")).equals(await adapter("reference"))).toBe(true);
    const pods = await client.list<V1Pod>(resourcePath({ group: "", version: "v1", plural: "pods", namespace }), { labelSelector: "kubetune.io/job-name=killed" });
    expect(pods.items.find((pod) => pod.metadata?.name === "killed-train-1")?.status?.containerStatuses?.[0]?.state?.terminated?.exitCode).toBe(137);
    expect((await getJob(namespace, "killed")).status?.conditions?.find((condition) => condition.type === "Succeeded")?.status).toBe("True");
  });
});
