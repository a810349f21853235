// What people scan: the short strings of status.progress that kubectl get's columns show, and
// the loss history behind the sparkline of kubetune status. The operator writes them; the CLI
// reads them, and falls back to the same formatting when a status predates them.

/** Points status.progress.lossHistory keeps at most. */
export const LOSS_HISTORY_POINTS = 32;

export interface LossPoint {
  step: number;
  loss: number;
}

/** 50%: whole percent, rounded down, so that a job shows 100% only once its last step is done. */
export function formatPercent(percent: number): string {
  return `${Math.floor(Math.min(100, Math.max(0, percent)))}%`;
}

/** 0.4225: four significant digits. */
export function formatLoss(loss: number): string {
  return Number.isFinite(loss) ? loss.toPrecision(4) : String(loss);
}

/** 1h12m, 1m13s, 42s: the ETA column. */
export function formatDuration(totalSeconds: number): string {
  const seconds = Math.max(0, Math.round(totalSeconds));
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  if (hours > 0) return `${hours}h${minutes}m`;
  if (minutes > 0) return `${minutes}m${seconds % 60}s`;
  return `${seconds}s`;
}

/**
 * The history with the loss at `point` added. The run's steps are cut into `limit` equal
 * spans; each span keeps the newest point reported in it, so the history covers the whole run
 * evenly without remembering anything else (with totalSteps unknown it keeps the newest
 * `limit` points). A step at or before the newest point means an attempt resumed from an
 * earlier checkpoint: the points it will redo are dropped.
 */
export function appendLossPoint(history: readonly LossPoint[] | undefined, point: LossPoint, totalSteps?: number, limit = LOSS_HISTORY_POINTS): LossPoint[] {
  const span = totalSteps ? Math.max(1, Math.ceil(totalSteps / limit)) : 1;
  const bucket = (step: number) => Math.floor((step - 1) / span);
  const points = (history ?? []).filter((entry) => entry.step < point.step && bucket(entry.step) !== bucket(point.step));
  points.push({ step: point.step, loss: roundLoss(point.loss) });
  return points.slice(-limit);
}

function roundLoss(loss: number): number {
  return Number(loss.toPrecision(4));
}
