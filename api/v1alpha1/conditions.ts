// Condition types and reasons of FineTuneJob status. Each is data with its meaning, so that
// docs/api.md lists them and the operator, CLI and tests share one spelling.

import type { Phase } from "./finetunejob.ts";

const conditionTypeDocs = {
  PreflightChecked: "A small CPU-only pod checked that the model, tokenizer and dataset exist and parse, before any GPU was held.",
  Admitted: "The queue admitted the job: its resources are reserved and a trainer pod may run.",
  Running: "A trainer pod is running (True), or is not running and why (False).",
  Succeeded: "The job finished and its outputs are complete.",
  Failed: "The job stopped for good; the reason says why and the message what to do.",
  Suspended: "The job is held by runPolicy.suspend or by its queue; it resumes from its last checkpoint.",
  Ready: "Summary for kstatus (Flux) and kubectl wait: True once the job has succeeded; False, with the reason, while it is pending, running, suspended or failed.",
  Reconciling: "Summary for kstatus: True while the job is on its way to an end (Pending, Queued, Running); kstatus reports it as in progress.",
  Stalled: "Summary for kstatus: True once the job has failed for good; kstatus reports it as failed.",
} as const;

const reasonDocs = {
  InvalidSpec: "The spec breaks a rule that the API server did not enforce; the message names each field.",
  PreflightRunning: "The preflight pod is checking the model, tokenizer and dataset.",
  PreflightPassed: "The model, tokenizer and dataset exist and parse.",
  Queued: "The job waits in its queue for resources.",
  ExceedsQueueQuota: "The job asks for more GPUs, CPU or memory than its FineTuneQueue's whole quota, so it could never be admitted: lower resources or use a larger queue.",
  PreflightChecked: "A small CPU-only pod checked that the model, tokenizer and dataset exist and parse, before any GPU was held.",
  Admitted: "The queue admitted the job.",
  PodCreated: "A trainer pod was created and is starting.",
  Training: "The trainer is training.",
  Retrying: "An attempt failed and another starts from the last checkpoint.",
  Completed: "Training finished and the outputs are written.",
  Suspended: "runPolicy.suspend is true: a checkpoint was saved and the trainer stopped.",
  Resumed: "runPolicy.suspend became false: training resumes from the last checkpoint.",
  NameConflict: "An object the job needs (its trainer or preflight pod) exists under the job's fixed name but belongs to something else; the operator never takes it over. Delete or rename that object, then recreate the job.",
  EarlierJobPodTerminating:
    "A pod under the job's fixed name still belongs to an earlier FineTuneJob of the same name, which was deleted; the operator deletes it (as the garbage collector would) and the job starts once it is gone.",
  ContainerConfigError: "The pod's container could not be configured for longer than the timeout: usually a Secret it references (storage.secretRef) is missing or lacks the key; the message says which.",
  ImagePullFailed: "The trainer image could not be pulled: check trainer.image and the pull secret.",
  Unschedulable: "No node fits the trainer pod: check resources, nodeSelector, tolerations and affinity.",
  OOMKilled: "The trainer ran out of memory: raise resources.memory or lower batchSize or maxSeqLength.",
  InvalidDataset: "The dataset could not be read as the format says; the message names the file and line.",
  ModelNotFound: "baseModel.uri holds no loadable model (config.json, *.safetensors, tokenizer.json).",
  StorageAccessDenied: "S3 refused access: check storage.secretRef, the credentials and the bucket policy.",
  TrainerFailed: "The trainer exited with an error; the message holds the end of its log.",
  BackendUnavailable: "trainer.backend asks for a compute backend the trainer cannot start (a GPU without a driver, or an image without the GPU build); the message says what is missing.",
  BackoffLimitExceeded: "Attempts failed more often than runPolicy.backoffLimit allows.",
  DeadlineExceeded: "The job ran longer than runPolicy.activeDeadlineSeconds.",
  Preempted: "The trainer pod was evicted for a higher-priority workload; the job resumes from its last checkpoint.",
  InterruptedWithoutProgress:
    "The trainer was interrupted (evicted, preempted, stopped by SIGTERM) more times in a row than the operator's limit without saving a new checkpoint; interruptions back off exponentially until then. Find what evicts the pods, or checkpoint more often.",
} as const;

export type ConditionType = keyof typeof conditionTypeDocs;
export type Reason = keyof typeof reasonDocs;

function constants<K extends string>(docs: Record<K, string>): { readonly [Key in K]: Key } {
  return Object.fromEntries(Object.keys(docs).map((key) => [key, key])) as { [Key in K]: Key };
}

/** Condition types, e.g. ConditionType.Succeeded (kubectl wait --for=condition=Succeeded). */
export const ConditionType = constants(conditionTypeDocs);
/** Condition reasons, e.g. Reason.OOMKilled. */
export const Reason = constants(reasonDocs);
/** What each condition type means. */
export const CONDITION_TYPE_DOCS: Readonly<Record<ConditionType, string>> = conditionTypeDocs;
/** What each reason means and what to do about it. */
export const REASON_DOCS: Readonly<Record<Reason, string>> = reasonDocs;

/** What each phase means. */
export const PHASE_DOCS: Readonly<Record<Phase, string>> = {
  Pending: "Accepted; the operator has not yet queued it.",
  Queued: "Waiting in its queue for resources.",
  Running: "A trainer pod is starting or training.",
  Succeeded: "Finished; status.outputs lists what was written.",
  Failed: "Stopped for good; the Failed condition says why.",
  Suspended: "Held by runPolicy.suspend or by its queue.",
};
