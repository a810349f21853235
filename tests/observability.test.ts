import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { metricNames, unknownMetrics } from "./promql.ts";

// The dashboard and the alert rules of the Helm chart may only query metrics the operator
// really exports: names taken from a live registry, with the series a histogram adds.

const chart = path.join(import.meta.dirname, "..", "helm", "kubetune");

interface Panel {
  title: string;
  targets?: { expr: string }[];
  panels?: Panel[];
}

function dashboardQueries(): { where: string; expr: string }[] {
  const dashboard = JSON.parse(readFileSync(path.join(chart, "dashboards", "kubetune.json"), "utf8")) as {
    panels: Panel[];
    templating: { list: { name: string; query?: string | { query: string } }[] };
  };
  const panels = dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]);
  return [
    ...panels.flatMap((panel) => (panel.targets ?? []).map((target) => ({ where: `panel "${panel.title}"`, expr: target.expr }))),
    ...dashboard.templating.list
      .filter((variable) => variable.query !== undefined && variable.name !== "datasource")
      .map((variable) => ({ where: `variable $${variable.name}`, expr: typeof variable.query === "string" ? variable.query! : variable.query!.query })),
  ];
}

/** The rules template's expressions, with the values it substitutes taken as 1. */
function ruleExpressions(text = readFileSync(path.join(chart, "templates", "prometheusrule.yaml"), "utf8")): { where: string; expr: string }[] {
  const rules: { where: string; expr: string }[] = [];
  let alert = "";
  for (const line of text.split("\n")) {
    const name = /- alert: (\S+)/.exec(line);
    if (name) alert = name[1]!;
    const expr = /^\s+expr: (.*)$/.exec(line);
    if (expr) rules.push({ where: `alert ${alert}`, expr: expr[1]!.replace(/\{\{[^}]*\}\}/g, "1") });
  }
  return rules;
}

describe("metricNames", () => {
  it("finds the metrics of an expression, not its functions, labels, durations or variables", () => {
    expect(metricNames('histogram_quantile(0.95, sum by (le) (rate(kubetune_reconcile_duration_seconds_bucket{namespace=~"$namespace"}[$__rate_interval])))')).toEqual([
      "kubetune_reconcile_duration_seconds_bucket",
    ]);
    expect(metricNames("(max(kubetune_leader) or vector(0)) < 1")).toEqual(["kubetune_leader"]);
    expect(metricNames('kubetune_job_phase{phase="Failed", job=~"a(b) or c"} == 1 and on (namespace, job) kubetune_job_gpus > 0')).toEqual(["kubetune_job_gpus", "kubetune_job_phase"]);
    expect(metricNames("time() - kubetune_job_last_progress_timestamp_seconds > 1.5e3")).toEqual(["kubetune_job_last_progress_timestamp_seconds"]);
    expect(metricNames('label_values(kubetune_job_phase{namespace=~"$namespace"}, job)')).toEqual(["kubetune_job_phase"]);
  });
});

describe("the Grafana dashboard and the PrometheusRule", () => {
  it("query something: every panel has a query and every alert an expression", () => {
    expect(dashboardQueries().length).toBeGreaterThanOrEqual(10);
    expect(ruleExpressions().map((rule) => rule.where)).toEqual(["alert KubetuneJobFailed", "alert KubetuneJobNoProgress", "alert KubetuneOperatorNotLeading", "alert KubetuneReconcileErrors"]);
  });

  it("use only metrics the operator exports", () => {
    expect(unknownMetrics([...dashboardQueries(), ...ruleExpressions()])).toEqual([]);
  });

  it("would catch a metric the operator does not export", () => {
    expect(unknownMetrics([{ where: "panel", expr: "sum(rate(kubetune_job_queue_wait_seconds_bucket[5m])) + kubetune_queue_length" }])).toEqual(["panel: kubetune_queue_length"]);
  });

  it("cover what the chart promises: jobs by phase, queue wait, loss and tokens/s per job, GPUs, and the four alerts' metrics", () => {
    const used = new Set([...dashboardQueries(), ...ruleExpressions()].flatMap(({ expr }) => metricNames(expr)));
    for (const name of ["kubetune_jobs", "kubetune_job_queue_wait_seconds_bucket", "kubetune_job_loss", "kubetune_job_tokens_per_second", "kubetune_job_gpus", "kubetune_job_phase", "kubetune_job_last_progress_timestamp_seconds", "kubetune_leader", "kubetune_reconcile_errors_total"]) {
      expect(used, name).toContain(name);
    }
  });
});
