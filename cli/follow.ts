import type { FineTuneJob } from "../api/index.ts";
import { Informer } from "../kube/informer.ts";
import { jobsPath, UserError, type Cluster } from "./cluster.ts";

/**
 * Watches one job until it succeeds or fails (list+watch, re-watching as the server ends
 * watches), calling onChange with every new version. Rejects if the job is deleted or the
 * timeout passes.
 */
export async function followJob(cluster: Cluster, name: string, onChange: (job: FineTuneJob) => void, timeoutMs?: number): Promise<FineTuneJob> {
  const informer = new Informer<FineTuneJob>(cluster.client, { path: jobsPath(cluster.namespace), fieldSelector: `metadata.name=${name}`, watchTimeoutSeconds: 60 });
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<FineTuneJob>((resolve, reject) => {
      const seen = (job: FineTuneJob) => {
        onChange(job);
        if (job.status?.phase === "Succeeded" || job.status?.phase === "Failed") resolve(job);
      };
      informer.on({
        add: seen,
        update: seen,
        delete: () => reject(new UserError(`finetunejob "${name}" was deleted while waiting for it`)),
      });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => reject(new UserError(`finetunejob "${name}" did not finish within ${Math.round(timeoutMs / 1000)}s; it goes on: kubetune status ${name} -n ${cluster.namespace}`)), timeoutMs);
      }
      informer.start().then(
        () => {
          if (!informer.get(cluster.namespace, name)) reject(new UserError(`finetunejob "${name}" not found in namespace "${cluster.namespace}"`));
        },
        reject,
      );
    });
  } finally {
    clearTimeout(timer);
    await informer.stop();
  }
}

/** 30s, 10m, 2h, 1h30m: a --timeout value in milliseconds. */
export function parseDuration(text: string): number {
  const match = /^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(text.trim());
  if (!match || text.trim() === "") throw new UserError(`"${text}" is not a duration such as 30s, 10m or 1h30m`);
  return ((Number(match[1] ?? 0) * 60 + Number(match[2] ?? 0)) * 60 + Number(match[3] ?? 0)) * 1000;
}
