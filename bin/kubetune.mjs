#!/usr/bin/env node
// The CLI is TypeScript run through tsx's loader, so the same sources serve the CLI, the
// operator image and the tests with no build step in between.
import { register } from "tsx/esm/api";

register();
await import("../cli/main.ts");
