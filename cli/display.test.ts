import { describe, expect, it } from "vitest";
import type { FineTuneJob } from "../api/index.ts";
import { barLine } from "./commands/submit.ts";
import { age, describeJob, jobTable, progressSummary, sparkline } from "./display.ts";

const now = new Date("2026-11-28T12:00:00Z");

function succeeded(): FineTuneJob {
  return {
    apiVersion: "kubetune.io/v1alpha1",
    kind: "FineTuneJob",
    metadata: { name: "quickstart", namespace: "default", creationTimestamp: "2026-11-28T11:58:00Z" },
    spec: { method: { type: "lora" }, baseModel: { uri: "s3://kubetune/quickstart/model" } },
    status: {
      phase: "Succeeded",
      attempts: 1,
      failedAttempts: 0,
      startTime: "2026-11-28T11:58:05Z",
      completionTime: "2026-11-28T11:59:30Z",
      progress: {
        step: 200,
        totalSteps: 200,
        epoch: 4.44,
        percent: 100,
        percentText: "100%",
        loss: 0.42254677414894104,
        lossText: "0.4225",
        evalLoss: 0.171,
        learningRate: 0.003,
        tokensPerSecond: 1234.5,
        etaSeconds: 0,
        eta: "0s",
        updatedAt: "2026-11-28T11:59:28Z",
        lossHistory: [
          { step: 25, loss: 2.31 },
          { step: 50, loss: 1.4 },
          { step: 100, loss: 0.8 },
          { step: 150, loss: 0.5 },
          { step: 200, loss: 0.4225 },
        ],
      },
      lastCheckpoint: { step: 200, uri: "s3://kubetune/outputs/quickstart/checkpoints/step-00000200", time: "2026-11-28T11:59:29Z" },
      outputs: {
        uri: "s3://kubetune/outputs/quickstart",
        files: [
          { name: "adapter_config.json", sha256: "a".repeat(64), size: 812 },
          { name: "adapter_model.safetensors", sha256: "b".repeat(64), size: 65624 },
        ],
        trainableParameters: 16384,
        totalParameters: 1066816,
        trainableShare: 0.01536,
        loadableBy: ["PEFT", "vLLM"],
      },
      conditions: [
        { type: "PreflightChecked", status: "True", reason: "PreflightPassed", message: "the model, tokenizer and dataset exist and parse", lastTransitionTime: "2026-11-28T11:58:04Z" },
        { type: "Succeeded", status: "True", reason: "Completed", message: "attempt 1 finished; outputs are in s3://kubetune/outputs/quickstart", lastTransitionTime: "2026-11-28T11:59:30Z" },
      ],
    },
  } as FineTuneJob;
}

describe("sparkline", () => {
  it("draws the lowest value as ▁ and the highest as █", () => {
    expect(sparkline([2.31, 1.4, 0.8, 0.5, 0.4225])).toBe("█▅▂▁▁");
    expect(sparkline([1, 2, 3, 4, 5, 6, 7, 8])).toBe("▁▂▃▄▅▆▇█");
    expect(sparkline([3, 3])).toBe("▄▄");
    expect(sparkline([])).toBe("");
  });
});

describe("age", () => {
  it("rounds as kubectl does", () => {
    expect(age("2026-11-28T11:58:04Z", now)).toBe("116s");
    expect(age("2026-11-28T11:00:00Z", now)).toBe("60m");
    expect(age("2026-11-28T06:00:00Z", now)).toBe("6h");
    expect(age("2026-11-20T12:00:00Z", now)).toBe("8d");
  });
});

describe("kubetune status", () => {
  it("shows phase and why, progress, the loss curve, the checkpoint, outputs and who loads them, conditions and events", () => {
    const text = describeJob(succeeded(), now, [{ type: "Normal", reason: "PodCreated", message: "created trainer pod quickstart-train-1 (attempt 1)", lastTimestamp: "2026-11-28T11:58:05Z" }]);
    expect(text).toBe(
      [
        "Name:       quickstart",
        "Namespace:  default",
        "Phase:      Succeeded (attempt 1)",
        "Method:     lora on s3://kubetune/quickstart/model",
        "Reason:     Completed: attempt 1 finished; outputs are in s3://kubetune/outputs/quickstart",
        "Progress:   step 200/200 [####################] 100%, epoch 4.44",
        "Loss:       0.4225 (eval 0.1710)   █▅▂▁▁  2.310 -> 0.4225 over steps 25-200",
        "Throughput: 1,235 tokens/s, learning rate 3.00e-3, reported 32s ago",
        "Checkpoint: step 200 at s3://kubetune/outputs/quickstart/checkpoints/step-00000200 (31s ago)",
        "Started:    2026-11-28T11:58:05Z, finished 2026-11-28T11:59:30Z",
        "Outputs:    s3://kubetune/outputs/quickstart",
        "            adapter_config.json  812 bytes  sha256 aaaaaaaaaaaa",
        "            adapter_model.safetensors  65,624 bytes  sha256 bbbbbbbbbbbb",
        "            trains 16,384 parameters of 1,066,816 (1.54%)",
        "Loads in:   PEFT: PeftModel.from_pretrained(base_model, <adapter folder>)",
        "            vLLM: vllm serve <base model> --enable-lora --lora-modules <name>=<adapter folder>",
        "Conditions:",
        "  TYPE               STATUS   REASON            AGE    MESSAGE",
        "  PreflightChecked   True     PreflightPassed   116s   the model, tokenizer and dataset exist and parse",
        "  Succeeded          True     Completed         30s    attempt 1 finished; outputs are in s3://kubetune/outputs/quickstart",
        "Events:",
        "  TYPE     REASON       AGE    MESSAGE",
        "  Normal   PodCreated   115s   created trainer pod quickstart-train-1 (attempt 1)",
      ].join("\n"),
    );
  });

  it("shows a job the operator has not seen yet as Pending, without empty sections", () => {
    const fresh = { ...succeeded(), status: undefined } as FineTuneJob;
    expect(describeJob(fresh, now)).toBe(["Name:      quickstart", "Namespace: default", "Phase:     Pending", "Method:    lora on s3://kubetune/quickstart/model"].join("\n"));
  });
});

describe("kubetune list", () => {
  it("prints kubectl get ftj's columns, with NAMESPACE first for every namespace", () => {
    expect(jobTable([succeeded()], now, true)).toBe(
      ["NAMESPACE   NAME         PHASE       METHOD   PROGRESS   LOSS     ETA   AGE", "default     quickstart   Succeeded   lora     100%       0.4225   0s    2m"].join("\n"),
    );
  });

  it("formats the numbers itself for a status written before the display strings existed", () => {
    const old = succeeded();
    old.status!.progress = { step: 100, totalSteps: 200, percent: 50, loss: 0.42254677414894104, etaSeconds: 73 };
    old.status!.phase = "Running";
    expect(jobTable([old], now, false).split("\n")[1]).toBe("quickstart   Running   lora     50%        0.4225   1m13s   2m");
  });
});

describe("kubetune submit --wait", () => {
  it("draws one progress line on a terminal", () => {
    const running = succeeded();
    running.status!.phase = "Running";
    running.status!.progress = { ...running.status!.progress, step: 50, percentText: "25%", eta: "1m13s" };
    running.status!.conditions = [{ type: "Running", status: "True", reason: "Training", message: "attempt 1 is training", lastTransitionTime: "2026-11-28T11:58:10Z" }];
    expect(barLine(running, 80)).toBe("step 50/200 [########......................] 25%  loss 0.4225  ETA 1m13s");
    expect(progressSummary(running)).toBe("Running  step 50/200  25%  loss 0.4225  1,235 tok/s  ETA 1m13s  (Training: attempt 1 is training)");
  });
});
