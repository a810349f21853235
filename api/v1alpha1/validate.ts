// The API server's checks, in TypeScript: the CLI runs them before anything reaches a cluster,
// and the operator runs them on every job, so that a cluster whose API server ignores the CRD's
// CEL rules still refuses bad jobs (phase Failed, reason InvalidSpec).

import { checkTransition, checkValue, isPlainObject } from "../schema/check.ts";
import { applySchemaDefaults } from "../schema/defaults.ts";
import type { Problem } from "../schema/schema.ts";
import { API_VERSION, KIND, fineTuneJobSchema, type FineTuneJob } from "./finetunejob.ts";

export type { Problem } from "../schema/schema.ts";

/**
 * Every problem with obj as a FineTuneJob: wrong types, values outside enums, ranges and
 * patterns, missing required fields, unknown fields, and the cross-field rules. Empty when the
 * API server would accept it. Paths read like spec.method.lora.r or spec.resources.tolerations[0].effect.
 */
export function validate(obj: unknown): Problem[] {
  if (!isPlainObject(obj)) {
    return [{ path: "", message: `must be a ${KIND} object (a mapping with apiVersion, kind, metadata and spec)` }];
  }
  const problems: Problem[] = [];
  if (typeof obj.kind === "string" && obj.kind !== KIND) {
    return [{ path: "kind", message: `must be ${KIND} (${API_VERSION}), not ${JSON.stringify(obj.kind)}` }];
  }
  if (typeof obj.apiVersion === "string" && obj.apiVersion !== API_VERSION) {
    problems.push({ path: "apiVersion", message: `must be ${API_VERSION}, not ${JSON.stringify(obj.apiVersion)}` });
  }
  checkValue(fineTuneJobSchema, applySchemaDefaults(fineTuneJobSchema, obj), "", problems);
  return problems;
}

/**
 * The problems with replacing oldObj (as stored) by newObj: those of newObj itself, and the
 * changes the API server refuses, namely any spec change but runPolicy.suspend once the job has
 * started (status.startTime is set).
 */
export function validateUpdate(oldObj: unknown, newObj: unknown): Problem[] {
  const problems = validate(newObj);
  checkTransition(fineTuneJobSchema, applySchemaDefaults(fineTuneJobSchema, oldObj), applySchemaDefaults(fineTuneJobSchema, newObj), "", problems);
  return problems;
}

/** One problem as a line: `spec.method.lora.r: must be >= 1`. */
export function formatProblem(problem: Problem): string {
  return problem.path === "" ? problem.message : `${problem.path}: ${problem.message}`;
}

/** All problems in one message, as the InvalidSpec condition carries them. */
export function describeProblems(problems: readonly Problem[]): string {
  return `invalid spec: ${problems.map(formatProblem).join("; ")}`;
}

/** Narrows obj to a FineTuneJob when validate finds nothing wrong with it. */
export function isValidFineTuneJob(obj: unknown): obj is FineTuneJob {
  return validate(obj).length === 0;
}

/** True once a trainer pod has started (status.startTime is set): from then on the spec is fixed but for suspend. */
export function hasStarted(job: FineTuneJob): boolean {
  return job.status?.startTime !== undefined;
}
