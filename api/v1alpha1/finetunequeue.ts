// FineTuneQueue, kubetune.io/v1alpha1: the operator's built-in queue for clusters without Kueue.
// A cluster-scoped quota of GPUs (and optionally CPU and memory) that FineTuneJobs naming it in
// spec.queueName are admitted into, in priority and then arrival order. Its CRD (crds/) and
// field reference (docs/api-finetunequeue.md) are derived from this file, as FineTuneJob's are.

import { stringify } from "yaml";
import { checkValue, isPlainObject } from "../schema/check.ts";
import { applySchemaDefaults } from "../schema/defaults.ts";
import { renderFieldReference } from "../schema/markdown.ts";
import * as s from "../schema/schema.ts";
import type { Infer, InferDefaulted, Problem } from "../schema/schema.ts";
import { API_VERSION, GROUP } from "./finetunejob.ts";
import { customResourceDefinition } from "./crd.ts";

export const QUEUE_KIND = "FineTuneQueue";
export const QUEUE_LIST_KIND = "FineTuneQueueList";
export const QUEUE_PLURAL = "finetunequeues";
export const QUEUE_SINGULAR = "finetunequeue";
export const QUEUE_SHORT_NAMES = ["ftq"] as const;
export const QUEUE_CRD_NAME = `${QUEUE_PLURAL}.${GROUP}`;
/** Where the generated CRD and field reference live, relative to the repository root. */
export const QUEUE_CRD_FILE = "crds/kubetune.io_finetunequeues.yaml";
export const QUEUE_API_DOCS_FILE = "docs/api-finetunequeue.md";

export const PREEMPTION_POLICIES = ["Never", "LowerPriority"] as const;

const LABEL_KEY_PATTERN = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
const LABEL_VALUE_PATTERN = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
const DNS_LABEL_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const REASON_PATTERN = "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";

const labelValue = (doc: string) => s.string(doc, { maxLength: 63, pattern: LABEL_VALUE_PATTERN, patternHint: "a label value" });

const namespaceSelector = s
  .object("A label selector over Namespaces (metav1.LabelSelector): a namespace is served when its labels match every term.", {
    matchLabels: s.map("Labels the namespace must have, with these values.", labelValue("A label value."), { maxProperties: 32 }),
    matchExpressions: s.array(
      "Requirements on the namespace's labels.",
      s
        .object("One requirement.", {
          key: s.string("The label key.", { minLength: 1, maxLength: 316, pattern: LABEL_KEY_PATTERN, patternHint: "a label key" }).required(),
          operator: s.enumeration("In, NotIn, Exists or DoesNotExist.", ["In", "NotIn", "Exists", "DoesNotExist"]).required(),
          values: s.array("Values for In and NotIn; empty for Exists and DoesNotExist.", labelValue("A label value."), { maxItems: 64, listType: "atomic" }),
        })
        .rule({
          cel: "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
          check: (self) => (self.operator === "In" || self.operator === "NotIn") === (self.values !== undefined && self.values.length > 0),
          message: "must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
          fieldPath: ".values",
        }),
      { maxItems: 16, listType: "atomic" },
    ),
  });

const specSchema = s
  .object("The quota the queue admits jobs into, whom it serves, and whether it preempts.", {
    gpus: s.integer("GPUs (nvidia.com/gpu) the jobs admitted at one time may hold together.", { minimum: 0, maximum: 100_000 }).required(),
    cpu: s.quantity("CPU the admitted jobs may request together (their resources.cpu), e.g. 64; unlimited when unset. A job without resources.cpu counts 0."),
    memory: s.quantity("Memory the admitted jobs may request together (their resources.memory), e.g. 512Gi; unlimited when unset. A job without resources.memory counts 0."),
    namespaces: s.array(
      "Namespaces whose jobs may use the queue; with namespaceSelector, a namespace in either is served. Every namespace when both are unset.",
      s.string("A namespace name.", { minLength: 1, maxLength: 63, pattern: DNS_LABEL_PATTERN, patternHint: "a namespace name" }),
      { maxItems: 256, listType: "set" },
    ),
    namespaceSelector: namespaceSelector,
    preemption: s.enumeration(
      "Never: a job waits until quota is free. LowerPriority: a job that does not fit stops admitted jobs of lower priority (the lowest, then the newest, first; only as many as it needs); they checkpoint on SIGTERM and go back to the queue without counting a failure.",
      PREEMPTION_POLICIES,
    ).default("LowerPriority"),
  });

const conditionSchema = s.object("An observation of the queue, in the metav1.Condition shape.", {
  type: s.string("Condition type: Ready.", { minLength: 1, maxLength: 316 }).required(),
  status: s.enumeration("True, False or Unknown.", ["True", "False", "Unknown"]).required(),
  observedGeneration: s.integer("The metadata.generation the condition was set for.", { minimum: 0 }),
  lastTransitionTime: s.dateTime("When status last changed.").required(),
  reason: s.string("Why, in one CamelCase word.", { minLength: 1, maxLength: 1024, pattern: REASON_PATTERN, patternHint: "a CamelCase reason" }).required(),
  message: s.string("What the queue is doing, for a human.", { maxLength: 32768 }).required(),
});

const statusSchema = s.object("What the operator observed; written by the operator only.", {
  gpusInUse: s.integer("GPUs held by admitted jobs, including preempted ones whose trainer is still stopping.", { minimum: 0 }),
  cpuInUse: s.string("CPU requested by admitted jobs, as a quantity.", { maxLength: 64 }),
  memoryInUse: s.string("Memory requested by admitted jobs, as a quantity.", { maxLength: 64 }),
  admitted: s.integer("Jobs admitted now.", { minimum: 0 }),
  queued: s.integer("Jobs waiting for admission.", { minimum: 0 }),
  preempted: s.integer("Preemptions the queue has made since it was created.", { minimum: 0 }),
  conditions: s.array("The latest observation of each condition type.", conditionSchema, { maxItems: 8, listType: "map", listMapKeys: ["type"] }),
  observedGeneration: s.integer("The metadata.generation this status describes.", { minimum: 0 }),
});

export const fineTuneQueueSchema = s.object("FineTuneQueue admits FineTuneJobs that name it in spec.queueName within a GPU quota, by priority and then first come first served.", {
  apiVersion: s.string("kubetune.io/v1alpha1.").required(),
  kind: s.string("FineTuneQueue.").required(),
  metadata: s.objectMeta("Standard object metadata.").required(),
  spec: specSchema.required(),
  status: statusSchema,
});

export type FineTuneQueue = Infer<typeof fineTuneQueueSchema>;
export type FineTuneQueueSpec = Infer<typeof specSchema>;
export type DefaultedFineTuneQueueSpec = InferDefaulted<typeof specSchema>;
export type FineTuneQueueStatus = Infer<typeof statusSchema>;
export type NamespaceSelector = Infer<typeof namespaceSelector>;
export type PreemptionPolicy = (typeof PREEMPTION_POLICIES)[number];

/** The spec with its defaults applied. */
export function applyQueueDefaults(spec: FineTuneQueueSpec): DefaultedFineTuneQueueSpec {
  return applySchemaDefaults(specSchema, spec);
}

/** Every problem with obj as a FineTuneQueue; empty when the API server would accept it. */
export function validateQueue(obj: unknown): Problem[] {
  if (!isPlainObject(obj)) return [{ path: "", message: `must be a ${QUEUE_KIND} object (a mapping with apiVersion, kind, metadata and spec)` }];
  if (typeof obj.kind === "string" && obj.kind !== QUEUE_KIND) return [{ path: "kind", message: `must be ${QUEUE_KIND} (${API_VERSION}), not ${JSON.stringify(obj.kind)}` }];
  const problems: Problem[] = [];
  checkValue(fineTuneQueueSchema, applySchemaDefaults(fineTuneQueueSchema, obj), "", problems);
  return problems;
}

/** The CustomResourceDefinition of FineTuneQueue. */
export function buildQueueCrd(): Record<string, unknown> {
  return customResourceDefinition({
    name: QUEUE_CRD_NAME,
    names: { kind: QUEUE_KIND, listKind: QUEUE_LIST_KIND, plural: QUEUE_PLURAL, singular: QUEUE_SINGULAR, shortNames: QUEUE_SHORT_NAMES },
    scope: "Cluster",
    printerColumns: [
      { name: "GPUs", type: "integer", jsonPath: ".spec.gpus", description: "The GPU quota." },
      { name: "In Use", type: "integer", jsonPath: ".status.gpusInUse", description: "GPUs held by admitted jobs." },
      { name: "Admitted", type: "integer", jsonPath: ".status.admitted", description: "Jobs admitted now." },
      { name: "Queued", type: "integer", jsonPath: ".status.queued", description: "Jobs waiting for admission." },
      { name: "Preemption", type: "string", jsonPath: ".spec.preemption", description: "Never or LowerPriority.", priority: 1 },
      { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" },
    ],
    schema: fineTuneQueueSchema,
  });
}

export function renderQueueCrdYaml(): string {
  const header = ["# Generated by `npm run gen:crd` from api/v1alpha1/finetunequeue.ts. Do not edit:", "# change the schema there and run the generator again."].join("\n");
  return `${header}\n${stringify(buildQueueCrd(), { lineWidth: 0 })}`;
}

/** docs/api-finetunequeue.md: the FineTuneQueue field reference. */
export function renderQueueApiDocs(): string {
  return [
    "<!-- Generated by `npm run gen:docs` from api/v1alpha1/finetunequeue.ts. Do not edit. -->",
    "",
    `# ${QUEUE_KIND} API reference (${API_VERSION})`,
    "",
    `A \`${QUEUE_KIND}\` (plural \`${QUEUE_PLURAL}\`, short name \`${QUEUE_SHORT_NAMES.join("`, `")}\`, cluster-scoped) is the operator's`,
    "built-in queue. FineTuneJobs that name it in `spec.queueName` are admitted within its quota, by",
    "`spec.priority` (or their PriorityClass's value) and then first come first served. How admission,",
    "preemption and Kueue fit together: [queues.md](queues.md).",
    "",
    "## Fields",
    "",
    renderFieldReference(fineTuneQueueSchema, QUEUE_KIND),
  ].join("\n");
}
