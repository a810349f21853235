#!/usr/bin/env node
// The CLI is TypeScript run through tsx's loader, so the same sources serve the CLI, the images
// and the tests with no build step in between. The one exception is `kubetune operator`, a
// long-running process whose memory matters: it runs dist/operator.mjs, the same sources
// compiled into plain JavaScript by `npm run build` (scripts/build-operator.mjs), when that
// bundle exists and every file it was built from is as it was then. The operator image ships it;
// a checkout without a build (or with sources edited since) runs the sources.
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";

const root = new URL("../", import.meta.url);

/** Why the operator bundle cannot run (absent, or built from files that have changed since), or undefined when it can. */
function staleBundle() {
  const bundle = new URL("dist/operator.mjs", root);
  const inputs = new URL("dist/operator.inputs.json", root);
  if (!existsSync(bundle) || !existsSync(inputs)) return "no dist/operator.mjs";
  // About 200 files, 3 MB: some 20 ms.
  for (const [file, sha256] of Object.entries(JSON.parse(readFileSync(inputs, "utf8")))) {
    const path = new URL(file, root);
    if (!existsSync(path) || createHash("sha256").update(readFileSync(path)).digest("hex") !== sha256) return `${file} has changed since dist/operator.mjs was built`;
  }
  return undefined;
}

const stale = process.argv[2] === "operator" ? staleBundle() : "";
if (stale === undefined) {
  console.log("kubetune operator: running the compiled bundle dist/operator.mjs");
  await import(new URL("dist/operator.mjs", root).href);
} else {
  if (stale) console.log(`kubetune operator: running the TypeScript sources through tsx (${stale}; npm run build makes it)`);
  const { register } = await import("tsx/esm/api");
  register();
  await import("../cli/main.ts");
}
