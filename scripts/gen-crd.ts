// Writes crds/kubetune.io_finetunejobs.yaml and crds/kubetune.io_finetunequeues.yaml from the API module (npm run gen:crd).
import { writeFileSync } from "node:fs";
import { CRD_FILE, QUEUE_CRD_FILE, renderCrdYaml, renderQueueCrdYaml } from "../api/index.ts";

for (const [file, text] of [
  [CRD_FILE, renderCrdYaml()],
  [QUEUE_CRD_FILE, renderQueueCrdYaml()],
] as const) {
  writeFileSync(new URL(`../${file}`, import.meta.url), text);
  console.log(`wrote ${file}`);
}
