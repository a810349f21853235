/** What a trainer posts to the operator, at most every few seconds, and at each checkpoint. */
export interface ProgressReport {
  step: number;
  totalSteps?: number;
  epoch?: number;
  loss?: number;
  evalLoss?: number;
  learningRate?: number;
  tokensPerSecond?: number;
  etaSeconds?: number;
  /** Objective dpo: the step's rewards and log-probabilities (TRL's rewards/* and logps/*); rewards and logps may be negative. */
  preference?: PreferenceReport;
  /** Classification: accuracy on the eval set at the latest evaluation, in [0, 1]. */
  evalAccuracy?: number;
  checkpoint?: { step: number; uri: string };
  /** Sent once, at start: what the trainer computes on and why. */
  backend?: { name: string; device: string; description?: string; reason?: string };
  /** Sent once, when the outputs are published. */
  outputs?: {
    uri: string;
    mergedUri?: string;
    files: { name: string; sha256: string; size?: number }[];
    trainableParameters?: number;
    totalParameters?: number;
    trainableShare?: number;
    loadableBy?: string[];
  };
  /** Something the user should know that does not stop training (the trainer's warning event); becomes a Warning Event on the job. */
  warning?: { reason: string; message: string };
}

/** The rewards every preference objective reports; DPO adds the log-probabilities (a reward model has none). */
const REWARD_FIELDS = ["rewardsChosen", "rewardsRejected", "rewardsAccuracies", "rewardsMargins"] as const;
export const PREFERENCE_FIELDS = [...REWARD_FIELDS, "logpsChosen", "logpsRejected"] as const;
export type PreferenceReport = Record<(typeof REWARD_FIELDS)[number], number> & { logpsChosen?: number; logpsRejected?: number };

/** Checks a posted body field by field; returns the problems, naming each field. */
export function checkReport(body: unknown): string[] {
  if (typeof body !== "object" || body === null || Array.isArray(body)) return ["body: must be a JSON object"];
  const report = body as Record<string, unknown>;
  const problems: string[] = [];
  const number = (field: string, required = false) => {
    const value = report[field];
    if (value === undefined) {
      if (required) problems.push(`${field}: required`);
    } else if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
      problems.push(`${field}: must be a finite number >= 0`);
    }
  };
  number("step", true);
  for (const field of ["totalSteps", "epoch", "loss", "evalLoss", "learningRate", "tokensPerSecond", "etaSeconds"]) number(field);
  if (report.evalAccuracy !== undefined && !(typeof report.evalAccuracy === "number" && report.evalAccuracy >= 0 && report.evalAccuracy <= 1)) {
    problems.push("evalAccuracy: must be a number between 0 and 1");
  }
  const preference = report.preference as Record<string, unknown> | undefined;
  if (
    preference !== undefined &&
    (typeof preference !== "object" ||
      preference === null ||
      PREFERENCE_FIELDS.some((field) => {
        const value = preference[field];
        const optional = field === "logpsChosen" || field === "logpsRejected";
        return !(optional && value === undefined) && (typeof value !== "number" || !Number.isFinite(value));
      }))
  ) {
    problems.push(`preference: must be {${PREFERENCE_FIELDS.join(", ")}}, each a finite number (logps optional)`);
  }
  const checkpoint = report.checkpoint as { step?: unknown; uri?: unknown } | undefined;
  if (checkpoint !== undefined && (typeof checkpoint !== "object" || typeof checkpoint.step !== "number" || typeof checkpoint.uri !== "string")) {
    problems.push("checkpoint: must be {step: number, uri: string}");
  }
  const backend = report.backend as { name?: unknown; device?: unknown } | undefined;
  if (backend !== undefined && (typeof backend !== "object" || typeof backend.name !== "string" || typeof backend.device !== "string")) {
    problems.push("backend: must be {name: string, device: string, description?: string, reason?: string}");
  }
  const outputs = report.outputs as { uri?: unknown; files?: unknown } | undefined;
  if (outputs !== undefined && (typeof outputs !== "object" || typeof outputs.uri !== "string" || !Array.isArray(outputs.files))) {
    problems.push("outputs: must be {uri: string, files: [...]}");
  }
  const warning = report.warning as { reason?: unknown; message?: unknown } | undefined;
  if (
    warning !== undefined &&
    (typeof warning !== "object" || typeof warning.reason !== "string" || !/^[A-Z][A-Za-z0-9]{0,63}$/.test(warning.reason) || typeof warning.message !== "string" || warning.message.length > 4096)
  ) {
    problems.push("warning: must be {reason: CamelCase string of at most 64 characters, message: string of at most 4096}");
  }
  return problems;
}
