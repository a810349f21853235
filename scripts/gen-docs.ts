// Writes docs/api.md, the FineTuneJob field reference, from the API module (npm run gen:docs).
import { writeFileSync } from "node:fs";
import { API_DOCS_FILE, renderApiDocs } from "../api/index.ts";

writeFileSync(new URL(`../${API_DOCS_FILE}`, import.meta.url), renderApiDocs());
console.log(`wrote ${API_DOCS_FILE}`);
