import { describe, expect, it } from "vitest";
import { ProgressClock } from "../../trainer/train/progress.ts";
import { formatEventJson, progressLine } from "./run.ts";
import { readJob } from "./train.ts";

describe("kubetune run's display", () => {
  it("draws step, bar, percent, loss, eval loss, throughput and ETA on one line", () => {
    expect(progressLine({ step: 12, totalSteps: 60, loss: 2.34567, tokensPerSecond: 1234.4, etaSeconds: 125 }, 2.1, 120)).toBe(
      "step 12/60 [######........................] 20% loss 2.346 eval 2.100 1,234 tok/s ETA 2m05s",
    );
    expect(progressLine({ step: 1, totalSteps: 4, loss: 3, tokensPerSecond: 10, etaSeconds: 3 }, undefined, 40)).toBe("step 1/4 [###.......] 25% loss 3.000 10 tok/s ETA 3s");
  });

  it("writes each event as one JSON object with its time first", () => {
    const line = formatEventJson({ event: "eval", step: 3, evalLoss: 1.5, evalPerplexity: 4.48, evalTokens: 10 }, new Date("2026-01-02T03:04:05Z"));
    expect(line).toBe('{"time":"2026-01-02T03:04:05.000Z","event":"eval","step":3,"evalLoss":1.5,"evalPerplexity":4.48,"evalTokens":10}');
  });
});

describe("ProgressClock", () => {
  it("measures tokens per second over recent steps and projects the attempt's pace onto the steps left", () => {
    let now = 100;
    const clock = new ProgressClock(10, () => now, 2);
    clock.recordStep(1000, 1);
    clock.recordStep(3000, 1);
    clock.recordStep(500, 0.5);
    expect(clock.tokensPerSecond()).toBe(3500 / 1.5);
    now = 130;
    expect(clock.etaSeconds(13, 23)).toBe(100);
  });
});

describe("kubetune train's job", () => {
  it("comes from KUBETUNE_JOB_SPEC, checked as the API server would", async () => {
    const spec = { baseModel: { uri: "s3://models/m" }, dataset: { train: "s3://data/t.jsonl" }, method: { type: "lora" }, output: { uri: "s3://out/x" } };
    expect(await readJob(undefined, { KUBETUNE_JOB_SPEC: JSON.stringify(spec) })).toEqual({ spec, baseDir: process.cwd() });
    expect(await readJob(undefined, { KUBETUNE_JOB_SPEC: "{" })).toEqual({ problems: [expect.stringMatching(/^KUBETUNE_JOB_SPEC is not valid JSON/)] });
    expect(await readJob(undefined, { KUBETUNE_JOB_SPEC: JSON.stringify({ ...spec, method: { type: "lora", lora: { r: 0 } } }) })).toEqual({
      problems: [expect.stringMatching(/^spec\.method\.lora\.r: must be/)],
    });
    expect(await readJob(undefined, {})).toEqual({ problems: ["no job: pass a manifest file or set KUBETUNE_JOB_SPEC to the job's spec as JSON"] });
  });
});
