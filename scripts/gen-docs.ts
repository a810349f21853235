// Writes docs/api.md (FineTuneJob) and docs/api-finetunequeue.md (FineTuneQueue), the field references, from the API module (npm run gen:docs).
import { writeFileSync } from "node:fs";
import { API_DOCS_FILE, QUEUE_API_DOCS_FILE, renderApiDocs, renderQueueApiDocs } from "../api/index.ts";

for (const [file, text] of [
  [API_DOCS_FILE, renderApiDocs()],
  [QUEUE_API_DOCS_FILE, renderQueueApiDocs()],
] as const) {
  writeFileSync(new URL(`../${file}`, import.meta.url), text);
  console.log(`wrote ${file}`);
}
