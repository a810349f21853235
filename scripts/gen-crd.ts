// Writes crds/kubetune.io_finetunejobs.yaml from the API module (npm run gen:crd).
import { writeFileSync } from "node:fs";
import { CRD_FILE, renderCrdYaml } from "../api/index.ts";

writeFileSync(new URL(`../${CRD_FILE}`, import.meta.url), renderCrdYaml());
console.log(`wrote ${CRD_FILE}`);
