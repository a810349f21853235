// Prints, as one JSON line, the backend that selectBackend chooses in a fresh process:
//   node --import tsx trainer/testing/print-backend.ts [auto|gpu|cpu] [gpusRequested]
// or {"error": ...} when it refuses. Tests run it with different environments, since a process
// chooses its backend once.
import { selectBackend, type BackendPreference } from "../backend/backend.ts";

try {
  const info = await selectBackend((process.argv[2] ?? "auto") as BackendPreference, { gpusRequested: Number(process.argv[3] ?? 0) });
  console.log(JSON.stringify({ ...info, intraOpThreads: process.env.TF_NUM_INTRAOP_THREADS ?? null }));
} catch (error) {
  console.log(JSON.stringify({ error: (error as Error).name, message: (error as Error).message }));
}
