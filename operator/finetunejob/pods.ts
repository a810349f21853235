import type { V1Affinity, V1EnvVar, V1Pod, V1Toleration } from "@kubernetes/client-node";
import { API_VERSION, KIND, type DefaultedFineTuneJobSpec, type FineTuneJob } from "../../api/index.ts";

/** Labels and annotations on the pods the operator owns. */
export const LABEL_JOB_NAME = "kubetune.io/job-name";
export const LABEL_COMPONENT = "app.kubernetes.io/component";
export const LABEL_ATTEMPT = "kubetune.io/attempt";
/** Failed attempts counted before this pod was created: how a restarted operator recovers the count. */
export const ANNOTATION_FAILURES_BEFORE = "kubetune.io/failures-before";
/** Interruptions in a row (evictions, SIGTERM stops) that saved no new checkpoint, before this pod was created. */
export const ANNOTATION_INTERRUPTIONS_BEFORE = "kubetune.io/interruptions-before";
/** status.lastCheckpoint.step when this pod was created: a later checkpoint means the attempt made progress. */
export const ANNOTATION_RESUME_STEP = "kubetune.io/resume-step";
export const FINALIZER = "kubetune.io/finalizer";

/**
 * The trainer's progress token: a service account token the kubelet projects into the trainer
 * pod, bound to that pod and meant only for the operator's progress endpoint (this audience;
 * the API server refuses it anywhere else). The operator checks it with a TokenReview
 * (operator/progress/token-review.ts), so no per-job Secret is written and none is read.
 */
export const PROGRESS_AUDIENCE = "kubetune-progress";
/** Where the trainer container reads that token (KUBETUNE_PROGRESS_TOKEN_FILE); read again for every report. */
export const PROGRESS_TOKEN_DIR = "/var/run/secrets/kubetune.io/progress";
export const PROGRESS_TOKEN_FILE = `${PROGRESS_TOKEN_DIR}/token`;
/** An hour, as the kubelet's own service account tokens; it rotates the file at 80% of that. */
export const PROGRESS_TOKEN_SECONDS = 3600;

/** Where the trainer writes scratch files: the root file system is read-only. */
export const SCRATCH_DIR = "/scratch";

/** What the operator's flags decide about the pods it makes. */
export interface PodSettings {
  /** Trainer image of CPU jobs when spec.trainer.image is unset (the Dockerfile's trainer-cpu), and the fallback of the two below. */
  defaultImage: string;
  /** Trainer image of GPU jobs when spec.trainer.image is unset (the Dockerfile's trainer-gpu). */
  gpuImage?: string;
  /** Image of preflight pods, which need no TensorFlow (the operator's own image). */
  preflightImage?: string;
  /** HTTPS URL of the operator's progress endpoint, as pods reach it. */
  progressUrl: string;
  /** PEM of the CA that signed the progress endpoint's certificate (public). */
  progressCa?: string;
  /** Storage settings applied where the spec leaves them unset (dev-cluster points these at its MinIO). */
  defaultStorage?: { endpoint?: string; region?: string; forcePathStyle?: boolean };
  /** Seconds a trainer gets to checkpoint after SIGTERM. */
  terminationGraceSeconds: number;
  imagePullPolicy?: "Always" | "IfNotPresent" | "Never";
}

/** A GPU job: it asks for GPUs, or insists on the GPU backend. */
export function isGpuJob(spec: DefaultedFineTuneJobSpec): boolean {
  return spec.resources.gpus > 0 || spec.trainer.backend === "gpu";
}

/** The trainer's image: the job's own, else the GPU or CPU build that fits the job. */
export function trainerImage(spec: DefaultedFineTuneJobSpec, settings: PodSettings): string {
  if (spec.trainer.image) return spec.trainer.image;
  return isGpuJob(spec) ? (settings.gpuImage ?? settings.defaultImage) : settings.defaultImage;
}

/** The preflight's image: the job's own when it sets one (the code that will read its data), else the small operator image. */
export function preflightImage(spec: DefaultedFineTuneJobSpec, settings: PodSettings): string {
  return spec.trainer.image ?? settings.preflightImage ?? settings.defaultImage;
}

export function trainerPodName(jobName: string, attempt: number): string {
  return `${jobName}-train-${attempt}`;
}

export function preflightPodName(jobName: string): string {
  return `${jobName}-preflight`;
}

/** The environment both the trainer and the preflight get: the job, storage and credentials. */
function commonEnv(job: FineTuneJob, spec: DefaultedFineTuneJobSpec, settings: PodSettings): V1EnvVar[] {
  // The operator's default endpoint (dev-cluster's MinIO) applies, with its addressing style, only where the job names none.
  const defaults = settings.defaultStorage;
  const storage =
    spec.storage.endpoint === undefined && defaults?.endpoint
      ? { ...spec.storage, endpoint: defaults.endpoint, region: spec.storage.region ?? defaults.region, forcePathStyle: defaults.forcePathStyle ?? spec.storage.forcePathStyle }
      : { ...spec.storage, region: spec.storage.region ?? defaults?.region };
  const env: V1EnvVar[] = [
    { name: "KUBETUNE_JOB_NAME", value: job.metadata.name },
    { name: "KUBETUNE_JOB_NAMESPACE", value: job.metadata.namespace },
    { name: "KUBETUNE_JOB_UID", value: job.metadata.uid },
    // The whole spec, defaulted: the trainer needs no API access and no RBAC.
    { name: "KUBETUNE_JOB_SPEC", value: JSON.stringify({ ...spec, storage }) },
    { name: "HOME", value: SCRATCH_DIR },
    { name: "TMPDIR", value: SCRATCH_DIR },
  ];
  if (storage.region) env.push({ name: "AWS_REGION", value: storage.region });
  const secretRef = spec.storage.secretRef;
  if (secretRef) {
    // Credentials only ever travel as references: never in the spec, the pod spec, logs or status.
    env.push({ name: "AWS_ACCESS_KEY_ID", valueFrom: { secretKeyRef: { name: secretRef.name, key: secretRef.accessKeyIdKey } } });
    env.push({ name: "AWS_SECRET_ACCESS_KEY", valueFrom: { secretKeyRef: { name: secretRef.name, key: secretRef.secretAccessKeyKey } } });
    if (secretRef.sessionTokenKey) {
      env.push({ name: "AWS_SESSION_TOKEN", valueFrom: { secretKeyRef: { name: secretRef.name, key: secretRef.sessionTokenKey } } });
    }
  }
  return env;
}

/** The restricted Pod Security Standard, which trainer and preflight pods meet. */
function securityContexts() {
  return {
    pod: { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: "RuntimeDefault" } },
    container: {
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    },
  };
}

function ownerReference(job: FineTuneJob) {
  return { apiVersion: API_VERSION, kind: KIND, name: job.metadata.name!, uid: job.metadata.uid!, controller: true, blockOwnerDeletion: true };
}

/** What the attempts before this one leave for the next decision to count, written on the pod (decide is stateless). */
export interface AttemptHistory {
  /** Interruptions in a row without a new checkpoint before this attempt. */
  interruptionsBefore: number;
  /** The checkpoint step this attempt resumes from (0 for none). */
  resumeStep: number;
}

/** The trainer pod of one attempt: deterministic, so a restarted operator never makes a second. */
export function trainerPod(
  job: FineTuneJob,
  spec: DefaultedFineTuneJobSpec,
  attempt: number,
  failuresBefore: number,
  settings: PodSettings,
  history: AttemptHistory = { interruptionsBefore: 0, resumeStep: job.status?.lastCheckpoint?.step ?? 0 },
): V1Pod {
  const name = trainerPodName(job.metadata.name!, attempt);
  const security = securityContexts();
  const limits: Record<string, string> = {};
  const requests: Record<string, string> = {};
  if (spec.resources.gpus > 0) limits["nvidia.com/gpu"] = String(spec.resources.gpus);
  if (spec.resources.cpu !== undefined) requests.cpu = String(spec.resources.cpu);
  if (spec.resources.memory !== undefined) {
    requests.memory = String(spec.resources.memory);
    limits.memory = String(spec.resources.memory);
  }
  const env = [
    ...commonEnv(job, spec, settings),
    { name: "KUBETUNE_ATTEMPT", value: String(attempt) },
    { name: "KUBETUNE_PROGRESS_URL", value: settings.progressUrl },
    { name: "KUBETUNE_PROGRESS_TOKEN_FILE", value: PROGRESS_TOKEN_FILE },
    ...(settings.progressCa ? [{ name: "KUBETUNE_PROGRESS_CA", value: settings.progressCa }] : []),
  ];
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name,
      namespace: job.metadata.namespace,
      labels: { "app.kubernetes.io/name": "kubetune", [LABEL_COMPONENT]: "trainer", [LABEL_JOB_NAME]: job.metadata.name!, [LABEL_ATTEMPT]: String(attempt) },
      annotations: {
        [ANNOTATION_FAILURES_BEFORE]: String(failuresBefore),
        [ANNOTATION_INTERRUPTIONS_BEFORE]: String(history.interruptionsBefore),
        [ANNOTATION_RESUME_STEP]: String(history.resumeStep),
      },
      ownerReferences: [ownerReference(job)],
    },
    spec: {
      restartPolicy: "Never",
      terminationGracePeriodSeconds: settings.terminationGraceSeconds,
      securityContext: security.pod,
      automountServiceAccountToken: spec.storage.serviceAccountName !== undefined,
      ...(spec.storage.serviceAccountName ? { serviceAccountName: spec.storage.serviceAccountName } : {}),
      ...(spec.resources.nodeSelector || job.status?.admission?.nodeSelector ? { nodeSelector: { ...spec.resources.nodeSelector, ...job.status?.admission?.nodeSelector } } : {}),
      ...(spec.resources.tolerations || job.status?.admission?.tolerations
        ? { tolerations: [...(spec.resources.tolerations ?? []), ...(job.status?.admission?.tolerations ?? [])] as V1Toleration[] }
        : {}),
      ...(spec.resources.affinity ? { affinity: spec.resources.affinity as V1Affinity } : {}),
      ...(spec.resources.priorityClassName ? { priorityClassName: spec.resources.priorityClassName } : {}),
      containers: [
        {
          name: "trainer",
          image: trainerImage(spec, settings),
          ...(settings.imagePullPolicy ? { imagePullPolicy: settings.imagePullPolicy } : {}),
          args: ["train"],
          env,
          resources: { ...(Object.keys(requests).length ? { requests } : {}), ...(Object.keys(limits).length ? { limits } : {}) },
          securityContext: security.container,
          terminationMessagePolicy: "FallbackToLogsOnError",
          volumeMounts: [
            { name: "scratch", mountPath: SCRATCH_DIR },
            { name: "progress-token", mountPath: PROGRESS_TOKEN_DIR, readOnly: true },
          ],
        },
      ],
      volumes: [
        { name: "scratch", emptyDir: {} },
        // Apart from automountServiceAccountToken (off unless the job names a service account): this token is good for
        // nothing but the progress endpoint.
        { name: "progress-token", projected: { sources: [{ serviceAccountToken: { audience: PROGRESS_AUDIENCE, expirationSeconds: PROGRESS_TOKEN_SECONDS, path: "token" } }] } },
      ],
    },
  };
}

/** The preflight pod: CPU only, the trainer's credentials, checks inputs before a GPU is held. */
export function preflightPod(job: FineTuneJob, spec: DefaultedFineTuneJobSpec, settings: PodSettings): V1Pod {
  const security = securityContexts();
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name: preflightPodName(job.metadata.name!),
      namespace: job.metadata.namespace,
      labels: { "app.kubernetes.io/name": "kubetune", [LABEL_COMPONENT]: "preflight", [LABEL_JOB_NAME]: job.metadata.name! },
      ownerReferences: [ownerReference(job)],
    },
    spec: {
      restartPolicy: "Never",
      terminationGracePeriodSeconds: 5,
      securityContext: security.pod,
      automountServiceAccountToken: spec.storage.serviceAccountName !== undefined,
      ...(spec.storage.serviceAccountName ? { serviceAccountName: spec.storage.serviceAccountName } : {}),
      containers: [
        {
          name: "preflight",
          image: preflightImage(spec, settings),
          ...(settings.imagePullPolicy ? { imagePullPolicy: settings.imagePullPolicy } : {}),
          args: ["preflight"],
          env: commonEnv(job, spec, settings),
          resources: { requests: { cpu: "100m", memory: "256Mi" }, limits: { memory: "1Gi" } },
          securityContext: security.container,
          terminationMessagePolicy: "FallbackToLogsOnError",
          volumeMounts: [{ name: "scratch", mountPath: SCRATCH_DIR }],
        },
      ],
      volumes: [{ name: "scratch", emptyDir: {} }],
    },
  };
}
