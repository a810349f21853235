import { describe, expect, it } from "vitest";
import { applyDefaults, type FineTuneJob } from "../../api/index.ts";
import { preflightPod, trainerPod, type PodSettings } from "./pods.ts";

const images = {
  defaultImage: "ghcr.io/kubetune/kubetune-trainer-cpu:1.2.3",
  gpuImage: "ghcr.io/kubetune/kubetune-trainer-gpu:1.2.3",
  preflightImage: "ghcr.io/kubetune/kubetune-operator:1.2.3",
};
const settings: PodSettings = { ...images, progressUrl: "https://operator.kubetune-system.svc:8443", terminationGraceSeconds: 120 };

function job(spec: Record<string, unknown> = {}): FineTuneJob {
  return {
    apiVersion: "kubetune.io/v1alpha1",
    kind: "FineTuneJob",
    metadata: { name: "tune", namespace: "team-a", uid: "uid-1" },
    spec: {
      baseModel: { uri: "s3://models/smollm" },
      dataset: { train: "s3://data/train.jsonl" },
      method: { type: "lora" },
      output: { uri: "s3://out/tune" },
      ...spec,
    },
  } as FineTuneJob;
}

function trainerContainer(j: FineTuneJob, podSettings = settings) {
  return trainerPod(j, applyDefaults(j.spec), 1, 0, podSettings).spec!.containers[0]!;
}

function preflightContainer(j: FineTuneJob, podSettings = settings) {
  return preflightPod(j, applyDefaults(j.spec), podSettings).spec!.containers[0]!;
}

describe("the trainer pod's image", () => {
  it("is the GPU build, with the GPUs as nvidia.com/gpu limits, for a job that asks for GPUs", () => {
    const container = trainerContainer(job({ resources: { gpus: 2 } }));
    expect(container.image).toBe(images.gpuImage);
    expect(container.resources?.limits).toEqual({ "nvidia.com/gpu": "2" });
  });

  it("is the GPU build for a job that insists on the gpu backend", () => {
    expect(trainerContainer(job({ resources: { gpus: 1 }, trainer: { backend: "gpu" } })).image).toBe(images.gpuImage);
  });

  it("is the CPU build, with no GPU limit, for a job without GPUs", () => {
    const container = trainerContainer(job({ resources: { cpu: "4", memory: "8Gi" } }));
    expect(container.image).toBe(images.defaultImage);
    expect(container.resources).toEqual({ requests: { cpu: "4", memory: "8Gi" }, limits: { memory: "8Gi" } });
  });

  it("is the job's spec.trainer.image whenever it sets one, GPU or not", () => {
    const own = "registry.invalid/team-a/trainer:7";
    expect(trainerContainer(job({ resources: { gpus: 1 }, trainer: { image: own } })).image).toBe(own);
    expect(trainerContainer(job({ trainer: { image: own } })).image).toBe(own);
  });

  it("falls back to the default image for GPU jobs when no GPU image is configured", () => {
    expect(trainerContainer(job({ resources: { gpus: 1 } }), { ...settings, gpuImage: undefined }).image).toBe(images.defaultImage);
  });

  it("keeps the restricted security context on the GPU build", () => {
    const container = trainerContainer(job({ resources: { gpus: 1 } }));
    expect(container.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(container.volumeMounts).toEqual([
      { name: "scratch", mountPath: "/scratch" },
      { name: "progress-token", mountPath: "/var/run/secrets/kubetune.io/progress", readOnly: true },
    ]);
  });
});

describe("the trainer pod's progress token", () => {
  it("is a service account token projected for the progress endpoint alone, which the trainer reads from a file; no Secret holds it", () => {
    const j = job();
    const pod = trainerPod(j, applyDefaults(j.spec), 2, 0, settings);
    expect(pod.spec?.volumes?.find((volume) => volume.name === "progress-token")).toEqual({
      name: "progress-token",
      projected: { sources: [{ serviceAccountToken: { audience: "kubetune-progress", expirationSeconds: 3600, path: "token" } }] },
    });
    const env = pod.spec!.containers[0]!.env!;
    expect(env.find((variable) => variable.name === "KUBETUNE_PROGRESS_TOKEN_FILE")?.value).toBe("/var/run/secrets/kubetune.io/progress/token");
    expect(env.filter((variable) => variable.valueFrom?.secretKeyRef)).toEqual([]);
    // The API token stays off unless the job names a service account (for S3 through IRSA or workload identity).
    expect(pod.spec?.automountServiceAccountToken).toBe(false);
    expect(pod.spec?.securityContext).toMatchObject({ runAsNonRoot: true });
    expect(pod.spec!.containers[0]!.securityContext?.readOnlyRootFilesystem).toBe(true);
  });

  it("is not given to the preflight pod, which reports nothing", () => {
    const j = job();
    const pod = preflightPod(j, applyDefaults(j.spec), settings);
    expect(pod.spec?.volumes?.map((volume) => volume.name)).toEqual(["scratch"]);
  });
});

describe("the preflight pod's image", () => {
  it("is the operator's small image, without GPUs, even for a GPU job", () => {
    const container = preflightContainer(job({ resources: { gpus: 4 } }));
    expect(container.image).toBe(images.preflightImage);
    expect(container.resources?.limits?.["nvidia.com/gpu"]).toBeUndefined();
  });

  it("is the job's spec.trainer.image when it sets one: the code that will read the data checks it", () => {
    expect(preflightContainer(job({ trainer: { image: "registry.invalid/team-a/trainer:7" } })).image).toBe("registry.invalid/team-a/trainer:7");
  });

  it("falls back to the default image when no preflight image is configured", () => {
    expect(preflightContainer(job(), { ...settings, preflightImage: undefined }).image).toBe(images.defaultImage);
  });
});
