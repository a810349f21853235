export interface LossPoint {
  step: number;
  loss: number;
}

const WIDTH = 640;
const HEIGHT = 360;
const MARGIN = { left: 64, right: 20, top: 36, bottom: 44 };

/** Round tick values covering [low, high], about `count` of them. */
function ticks(low: number, high: number, count: number): number[] {
  const span = high - low || Math.abs(high) || 1;
  const rough = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((factor) => factor * magnitude).find((candidate) => candidate >= rough) ?? rough;
  const values: number[] = [];
  for (let value = Math.ceil(low / step) * step; value <= high + step * 1e-9; value += step) values.push(Number(value.toPrecision(12)));
  return values;
}

function escape(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** A self-contained SVG line chart of training loss (and eval loss, as dots) against step. */
export function lossPlotSvg(train: LossPoint[], evaluation: LossPoint[] = [], title = "Training loss"): string {
  const all = [...train, ...evaluation].filter((point) => Number.isFinite(point.loss));
  const maxStep = Math.max(1, ...all.map((point) => point.step));
  const minStep = Math.min(maxStep - 1, ...all.map((point) => point.step));
  const lossValues = all.map((point) => point.loss);
  const lowLoss = lossValues.length ? Math.min(...lossValues) : 0;
  const highLoss = lossValues.length ? Math.max(...lossValues) : 1;
  const pad = (highLoss - lowLoss) * 0.05 || 0.5;
  const [yLow, yHigh] = [lowLoss - pad, highLoss + pad];
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (step: number) => MARGIN.left + ((step - minStep) / (maxStep - minStep)) * plotWidth;
  const y = (loss: number) => MARGIN.top + (1 - (loss - yLow) / (yHigh - yLow)) * plotHeight;
  const format = (value: number) => (Math.abs(value) >= 100 ? value.toFixed(0) : Number(value.toPrecision(3)).toString());

  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${WIDTH / 2}" y="22" text-anchor="middle" font-size="15">${escape(title)}</text>`,
  ];
  for (const value of ticks(yLow, yHigh, 5)) {
    parts.push(`<line x1="${MARGIN.left}" x2="${WIDTH - MARGIN.right}" y1="${y(value).toFixed(1)}" y2="${y(value).toFixed(1)}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${MARGIN.left - 6}" y="${(y(value) + 4).toFixed(1)}" text-anchor="end">${format(value)}</text>`);
  }
  for (const value of ticks(minStep, maxStep, 6).filter((step) => step >= minStep)) {
    parts.push(`<text x="${x(value).toFixed(1)}" y="${HEIGHT - MARGIN.bottom + 18}" text-anchor="middle">${format(value)}</text>`);
  }
  parts.push(`<rect x="${MARGIN.left}" y="${MARGIN.top}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#333"/>`);
  parts.push(`<text x="${MARGIN.left + plotWidth / 2}" y="${HEIGHT - 8}" text-anchor="middle">step</text>`);
  parts.push(`<text transform="translate(16 ${MARGIN.top + plotHeight / 2}) rotate(-90)" text-anchor="middle">loss</text>`);
  const line = train.filter((point) => Number.isFinite(point.loss)).map((point) => `${x(point.step).toFixed(1)},${y(point.loss).toFixed(1)}`);
  if (line.length) parts.push(`<polyline points="${line.join(" ")}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>`);
  for (const point of evaluation.filter((entry) => Number.isFinite(entry.loss))) {
    parts.push(`<circle cx="${x(point.step).toFixed(1)}" cy="${y(point.loss).toFixed(1)}" r="3.5" fill="#d62728"/>`);
  }
  parts.push(`<g transform="translate(${WIDTH - MARGIN.right - 130} ${MARGIN.top + 10})">`);
  parts.push(`<line x1="0" x2="18" y1="0" y2="0" stroke="#1f77b4" stroke-width="2"/><text x="24" y="4">train loss</text>`);
  if (evaluation.length) parts.push(`<circle cx="9" cy="18" r="3.5" fill="#d62728"/><text x="24" y="22">eval loss</text>`);
  parts.push(`</g>`, `</svg>`, "");
  return parts.join("\n");
}
