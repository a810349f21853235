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
}

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
  return problems;
}
