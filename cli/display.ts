import { formatDuration, formatLoss, formatPercent, type FineTuneJob, type LossPoint } from "../api/index.ts";

/**
 * What the cluster commands print about jobs, as pure functions of the job (and the time), so
 * that tests pin the text down exactly.
 */

const SPARKS = "▁▂▃▄▅▆▇█";

/** ▇▆▅▃▂▁: one character per point, lowest loss ▁, highest █. */
export function sparkline(values: readonly number[]): string {
  if (values.length === 0) return "";
  const low = Math.min(...values);
  const high = Math.max(...values);
  return values.map((value) => SPARKS[high === low ? 3 : Math.round(((value - low) / (high - low)) * (SPARKS.length - 1))]).join("");
}

/** 45s, 12m, 3h, 5d: the AGE column, as kubectl rounds it. */
export function age(since: string | Date | undefined, now: Date): string {
  if (since === undefined) return "<unknown>";
  const seconds = Math.max(0, Math.floor((now.getTime() - new Date(since).getTime()) / 1000));
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 2 * 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 2 * 86400) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

/** The PROGRESS, LOSS and ETA columns: the operator's display strings, else the same formatting of the numbers. */
export function columns(job: FineTuneJob): { progress: string; loss: string; eta: string } {
  const progress = job.status?.progress;
  return {
    progress: progress?.percentText ?? (progress?.percent !== undefined ? formatPercent(progress.percent) : ""),
    loss: progress?.lossText ?? (progress?.loss !== undefined ? formatLoss(progress.loss) : ""),
    eta: progress?.eta ?? (progress?.etaSeconds !== undefined ? formatDuration(progress.etaSeconds) : ""),
  };
}

/** Rows padded into columns, as kubectl prints tables. */
export function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]?.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? "").length))) ?? [];
  return rows.map((row) => row.map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]! + 3))).join("").trimEnd()).join("\n");
}

/** The `kubetune list` table (kubectl get ftj's columns; NAMESPACE first with every namespace). */
export function jobTable(jobs: readonly FineTuneJob[], now: Date, withNamespace: boolean): string {
  const header = [...(withNamespace ? ["NAMESPACE"] : []), "NAME", "PHASE", "METHOD", "PROGRESS", "LOSS", "ETA", "AGE"];
  const rows = jobs.map((job) => {
    const shown = columns(job);
    return [
      ...(withNamespace ? [job.metadata.namespace ?? ""] : []),
      job.metadata.name ?? "",
      job.status?.phase ?? "",
      job.spec?.method?.type ?? "",
      shown.progress,
      shown.loss,
      shown.eta,
      age(job.metadata.creationTimestamp, now),
    ];
  });
  return table([header, ...rows]);
}

/** One line about a job in flight, for logs and --wait without a terminal. */
export function progressSummary(job: FineTuneJob): string {
  const status = job.status ?? {};
  const progress = status.progress;
  const shown = columns(job);
  const parts: string[] = [status.phase ?? "Pending"];
  if (progress?.step !== undefined) parts.push(`step ${progress.step}${progress.totalSteps ? `/${progress.totalSteps}` : ""}`);
  if (shown.progress) parts.push(shown.progress);
  if (shown.loss) parts.push(`loss ${shown.loss}`);
  if (progress?.tokensPerSecond !== undefined) parts.push(`${Math.round(progress.tokensPerSecond).toLocaleString("en-US")} tok/s`);
  if (shown.eta && status.phase === "Running") parts.push(`ETA ${shown.eta}`);
  const reason = mainCondition(job);
  if (reason) parts.push(`(${reason.reason}: ${reason.message})`);
  return parts.join("  ");
}

/** The condition that explains the phase now. */
export function mainCondition(job: FineTuneJob): { reason: string; message: string } | undefined {
  const phase = job.status?.phase ?? "Pending";
  const type = { Succeeded: "Succeeded", Failed: "Failed", Suspended: "Suspended" }[phase as string] ?? (job.status?.conditions?.some((c) => c.type === "Running") ? "Running" : "PreflightChecked");
  return job.status?.conditions?.find((condition) => condition.type === type);
}

/** Who loads an output, and how. */
const LOADERS: Record<string, string> = {
  PEFT: "PEFT: PeftModel.from_pretrained(base_model, <adapter folder>)",
  vLLM: "vLLM: vllm serve <base model> --enable-lora --lora-modules <name>=<adapter folder>",
  Transformers: "Transformers: AutoModelForCausalLM.from_pretrained(<merged folder, or the output folder of full fine-tuning>)",
  kubetune: "kubetune: a bottleneck adapter; its format and a PyTorch loader are in docs/adapters.md",
};

/** What `kubetune status JOB` prints. */
export function describeJob(job: FineTuneJob, now: Date, events: readonly { type?: string; reason?: string; message?: string; lastTimestamp?: string; eventTime?: string }[] = []): string {
  const status = job.status ?? {};
  const progress = status.progress;
  const shown = columns(job);
  const lines: [string, string][] = [
    ["Name", job.metadata.name ?? ""],
    ["Namespace", job.metadata.namespace ?? ""],
    ["Phase", `${status.phase ?? "Pending"}${status.attempts ? ` (attempt ${status.attempts}${status.failedAttempts ? `, ${status.failedAttempts} failed` : ""})` : ""}`],
    ["Method", `${job.spec?.method?.type ?? "?"} on ${job.spec?.baseModel?.uri ?? "?"}`],
  ];
  const main = mainCondition(job);
  if (main) lines.push(["Reason", `${main.reason}: ${main.message}`]);
  if (progress?.step !== undefined) {
    const share = progress.totalSteps ? progress.step / progress.totalSteps : 0;
    const bar = progress.totalSteps ? ` [${"#".repeat(Math.round(share * 20))}${".".repeat(20 - Math.round(share * 20))}] ${shown.progress}` : "";
    lines.push(["Progress", `step ${progress.step}${progress.totalSteps ? `/${progress.totalSteps}` : ""}${bar}${progress.epoch !== undefined ? `, epoch ${progress.epoch.toFixed(2)}` : ""}`]);
  }
  if (progress?.loss !== undefined) {
    const history: readonly LossPoint[] = progress.lossHistory ?? [];
    const curve = history.length > 1 ? `   ${sparkline(history.map((point) => point.loss))}  ${formatLoss(history[0]!.loss)} -> ${formatLoss(history.at(-1)!.loss)} over steps ${history[0]!.step}-${history.at(-1)!.step}` : "";
    lines.push(["Loss", `${shown.loss}${progress.evalLoss !== undefined ? ` (eval ${formatLoss(progress.evalLoss)})` : ""}${curve}`]);
  }
  const speed = [
    progress?.tokensPerSecond !== undefined ? `${Math.round(progress.tokensPerSecond).toLocaleString("en-US")} tokens/s` : "",
    progress?.learningRate !== undefined ? `learning rate ${progress.learningRate.toExponential(2)}` : "",
    shown.eta && status.phase === "Running" ? `ETA ${shown.eta}` : "",
    progress?.updatedAt ? `reported ${age(progress.updatedAt, now)} ago` : "",
  ].filter(Boolean);
  if (speed.length) lines.push(["Throughput", speed.join(", ")]);
  if (status.lastCheckpoint) lines.push(["Checkpoint", `step ${status.lastCheckpoint.step} at ${status.lastCheckpoint.uri} (${age(status.lastCheckpoint.time, now)} ago)`]);
  if (status.startTime) lines.push(["Started", `${status.startTime}${status.completionTime ? `, finished ${status.completionTime}` : ""}`]);
  const outputs = status.outputs;
  if (outputs?.uri) {
    lines.push(["Outputs", outputs.uri]);
    if (outputs.mergedUri) lines.push(["", `merged model: ${outputs.mergedUri}`]);
    for (const file of outputs.files ?? []) lines.push(["", `${file.name}${file.size !== undefined ? `  ${file.size.toLocaleString("en-US")} bytes` : ""}  sha256 ${file.sha256.slice(0, 12)}`]);
    if (outputs.trainableParameters !== undefined) {
      lines.push(["", `trains ${outputs.trainableParameters.toLocaleString("en-US")} parameters${outputs.totalParameters ? ` of ${outputs.totalParameters.toLocaleString("en-US")}` : ""}${outputs.trainableShare !== undefined ? ` (${(outputs.trainableShare * 100).toPrecision(3)}%)` : ""}`]);
    }
    if (outputs.loadableBy?.length) {
      lines.push(["Loads in", outputs.loadableBy[0]! in LOADERS ? LOADERS[outputs.loadableBy[0]!]! : outputs.loadableBy[0]!]);
      for (const server of outputs.loadableBy.slice(1)) lines.push(["", LOADERS[server] ?? server]);
    }
  }
  const width = Math.max(...lines.map(([label]) => label.length)) + 2;
  const text = lines.map(([label, value]) => `${label ? `${label}:` : ""}`.padEnd(width) + value);
  const conditions = status.conditions ?? [];
  if (conditions.length) {
    text.push("Conditions:");
    const rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], ...conditions.map((c) => [c.type, c.status, c.reason, age(c.lastTransitionTime, now), c.message])];
    text.push(...table(rows).split("\n").map((line) => `  ${line}`));
  }
  if (events.length) {
    text.push("Events:");
    const rows = [["TYPE", "REASON", "AGE", "MESSAGE"], ...events.map((event) => [event.type ?? "", event.reason ?? "", age(event.lastTimestamp ?? event.eventTime, now), event.message ?? ""])];
    text.push(...table(rows).split("\n").map((line) => `  ${line}`));
  }
  return text.join("\n");
}
