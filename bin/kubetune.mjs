#!/usr/bin/env node
// The CLI is TypeScript run through tsx's loader, so the same sources serve the CLI, the images
// and the tests with no build step in between. The one exception is `kubetune operator`, a
// long-running process whose memory matters: it runs dist/operator.mjs, the same sources
// compiled into plain JavaScript by `npm run build` (scripts/build-operator.mjs), when that
// bundle exists and every file it was built from is as it was then. The operator image ships it;
// a checkout without a build (or with sources edited since) runs the sources.
import { OPERATOR_BUNDLE, staleBundle } from "./operator-launch.mjs";

const stale = process.argv[2] === "operator" ? staleBundle() : "";
if (stale === undefined) {
  console.log("kubetune operator: running the compiled bundle dist/operator.mjs");
  await import(OPERATOR_BUNDLE.href);
} else {
  if (stale) console.log(`kubetune operator: running the TypeScript sources through tsx (${stale}; npm run build makes it)`);
  const { register } = await import("tsx/esm/api");
  register();
  await import("../cli/main.ts");
}
