import { OperatorMetrics } from "../operator/metrics.ts";

/**
 * The metric names a PromQL expression (or a Grafana label_values() query) reads: enough of
 * PromQL to check a dashboard and alert rules against the metrics a program exports.
 */

const KEYWORDS = new Set(["and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"]);

export function metricNames(expression: string): string[] {
  let text = expression
    // Grafana's label_values(metric{...}, label): the label is not a metric.
    .replace(/label_values\(\s*([^,]+?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)/g, "($1)")
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, "")
    .replace(/\{[^}]*\}/g, "")
    .replace(/\[[^\]]*\]/g, "")
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  // Grafana's template variables ($job, ${job}, $__rate_interval) outside matchers and ranges.
  text = text.replace(/\$\{?[A-Za-z_][A-Za-z0-9_]*\}?/g, "");
  const names = new Set<string>();
  for (const match of text.matchAll(/([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?/g)) {
    const [, name, call] = match;
    const before = text[match.index - 1];
    if (call || KEYWORDS.has(name!.toLowerCase()) || (before !== undefined && /[0-9.]/.test(before))) continue;
    names.add(name!);
  }
  return [...names].sort();
}

/** Every metric name the operator's registry exports, with the series a histogram adds. */
export function operatorMetricNames(): Set<string> {
  const metrics = new OperatorMetrics();
  metrics.trackApiRequests({});
  const names = new Set<string>();
  for (const metric of metrics.registry.getMetricsAsArray()) {
    const { name, type } = metric as unknown as { name: string; type: string };
    names.add(name);
    if (type === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) names.add(`${name}${suffix}`);
  }
  return names;
}

/** `where: name` for each metric the queries read that the operator does not export. */
export function unknownMetrics(queries: { where: string; expr: string }[], exported = operatorMetricNames()): string[] {
  return queries.flatMap(({ where, expr }) => metricNames(expr).filter((name) => !exported.has(name)).map((name) => `${where}: ${name}`));
}
