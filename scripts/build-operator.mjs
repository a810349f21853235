// `npm run build`: bundles `kubetune operator` (cli/operator-main.ts and everything it imports)
// into one plain-JavaScript file, dist/operator.mjs, which bin/kubetune.mjs runs instead of the
// TypeScript sources. Without tsx's loader and the CLI's other commands, the operator process
// needs about half the memory before it caches its first object.
//
//   node scripts/build-operator.mjs [OUTDIR]     (default: dist)
//
// esbuild comes with tsx (a production dependency), so `npm ci --omit=dev` is enough to build.
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";

const root = path.resolve(import.meta.dirname, "..");
const outdir = path.resolve(process.argv[2] ?? path.join(root, "dist"));

const result = await build({
  absWorkingDir: root,
  entryPoints: ["cli/operator-main.ts"],
  outfile: path.join(outdir, "operator.mjs"),
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  // Imported lazily, only for kubeconfig users with exec or auth-provider plugins (kube/config-loader.ts): from node_modules, when needed.
  external: ["@kubernetes/client-node"],
  // The CommonJS packages in the bundle (yaml, commander, prom-client) require() Node's own modules; an ES module has no require of its own.
  banner: { js: 'import { createRequire as kubetuneCreateRequire } from "node:module";\nconst require = kubetuneCreateRequire(import.meta.url);' },
  metafile: true,
  legalComments: "eof",
  logLevel: "warning",
});
// The files that went in (relative to the repository) and their SHA-256: bin/kubetune.mjs runs the
// sources instead when one has changed since. Contents, not times: git and COPY do not keep mtimes.
const inputs = {};
for (const file of Object.keys(result.metafile.inputs)) inputs[file] = createHash("sha256").update(await readFile(path.join(root, file))).digest("hex");
await writeFile(path.join(outdir, "operator.inputs.json"), `${JSON.stringify(inputs, null, 1)}\n`);
console.log(`${path.relative(process.cwd(), path.join(outdir, "operator.mjs"))}: ${Object.keys(inputs).length} files bundled`);
