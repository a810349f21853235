// How `kubetune operator` is launched, shared by bin/kubetune.mjs (which runs the bundle when it
// is fresh), bench/operator.ts (which measures the operator as the image runs it) and
// tests/dockerfile.test.ts (which holds the Dockerfile's operator ENTRYPOINT to these flags: a
// Dockerfile cannot read a file into an exec-form ENTRYPOINT).
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";

/**
 * The V8 flags of the operator's process. V8's defaults let the heap grow well past what the
 * operator keeps (a young generation of 3 x 16 MiB; an old generation that grows fast between
 * full collections). Semi-spaces of 1 MiB and --optimize-for-size's slower heap growth cost a
 * little GC time; with 10,000 jobs and their pods cached the operator's peak RSS was 128 MiB,
 * against 171 MiB with the small semi-spaces alone and 238 MiB with neither.
 */
export const OPERATOR_NODE_FLAGS = Object.freeze(["--max-semi-space-size=1", "--optimize-for-size"]);

/** The repository (or image) root: the folder above bin/. */
export const ROOT = new URL("../", import.meta.url);

/** The operator's bundle (`npm run build`, scripts/build-operator.mjs). */
export const OPERATOR_BUNDLE = new URL("dist/operator.mjs", ROOT);

/** Why the operator bundle cannot run (absent, or built from files that have changed since), or undefined when it can. */
export function staleBundle() {
  const inputs = new URL("dist/operator.inputs.json", ROOT);
  if (!existsSync(OPERATOR_BUNDLE) || !existsSync(inputs)) return "no dist/operator.mjs";
  // About 200 files, 3 MB: some 20 ms.
  for (const [file, sha256] of Object.entries(JSON.parse(readFileSync(inputs, "utf8")))) {
    const path = new URL(file, ROOT);
    if (!existsSync(path) || createHash("sha256").update(readFileSync(path)).digest("hex") !== sha256) return `${file} has changed since dist/operator.mjs was built`;
  }
  return undefined;
}
