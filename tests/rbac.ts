// What a rendered chart grants a ServiceAccount, and what that ServiceAccount did according to
// the API server's audit log, in one shape, so that tests compare the two as sets.
import { readFileSync } from "node:fs";

/** One permission: a verb on a resource (with its subresource) of an API group, in a namespace ("" = cluster-wide). */
export interface Permission {
  namespace: string;
  apiGroup: string;
  /** e.g. "pods", "finetunejobs/status". */
  resource: string;
  verb: string;
  /** Names the rule is limited to; empty for any. */
  resourceNames: string[];
}

interface RbacObject {
  kind: string;
  metadata: { name: string; namespace?: string };
  rules?: { apiGroups?: string[]; resources?: string[]; verbs?: string[]; resourceNames?: string[] }[];
  roleRef?: { kind: string; name: string };
  subjects?: { kind: string; name: string; namespace?: string }[];
}

/** Every permission the objects' Roles and ClusterRoles give the ServiceAccount through its bindings. */
export function grantsOf(objects: unknown[], serviceAccount: { namespace: string; name: string }): Permission[] {
  const rbac = objects.filter((object): object is RbacObject => typeof (object as RbacObject | null)?.kind === "string");
  const bound = rbac.filter(
    (object) =>
      (object.kind === "RoleBinding" || object.kind === "ClusterRoleBinding") &&
      object.subjects?.some((subject) => subject.kind === "ServiceAccount" && subject.name === serviceAccount.name && subject.namespace === serviceAccount.namespace),
  );
  const permissions: Permission[] = [];
  for (const binding of bound) {
    const namespace = binding.kind === "RoleBinding" ? (binding.metadata.namespace ?? "") : "";
    const role = rbac.find((object) => object.kind === binding.roleRef?.kind && object.metadata.name === binding.roleRef.name && (object.kind === "ClusterRole" || object.metadata.namespace === namespace));
    if (!role) throw new Error(`${binding.kind} ${binding.metadata.name} refers to ${binding.roleRef?.kind} ${binding.roleRef?.name}, which the chart does not render`);
    for (const rule of role.rules ?? []) {
      for (const apiGroup of rule.apiGroups ?? []) {
        for (const resource of rule.resources ?? []) {
          for (const verb of rule.verbs ?? []) permissions.push({ namespace, apiGroup, resource, verb, resourceNames: rule.resourceNames ?? [] });
        }
      }
    }
  }
  return permissions;
}

/** One request of the audit log, as RBAC sees it. */
export interface AuditedRequest {
  namespace: string;
  apiGroup: string;
  resource: string;
  verb: string;
  name?: string;
  code: number;
  decision?: string;
  uri: string;
}

/** The requests a user made, from the API server's audit log (JSON lines, Metadata level). */
export function requestsOf(auditLog: string, username: string): AuditedRequest[] {
  const requests: AuditedRequest[] = [];
  for (const line of readFileSync(auditLog, "utf8").split("\n")) {
    if (!line.includes(username)) continue;
    const event = JSON.parse(line) as {
      stage: string;
      verb: string;
      requestURI: string;
      user: { username: string };
      objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string; apiGroup?: string };
      responseStatus?: { code?: number };
      annotations?: Record<string, string>;
    };
    // A watch is logged when it starts and again when it ends: count it once.
    if (event.user.username !== username || event.stage === "ResponseStarted" || !event.objectRef?.resource) continue;
    const ref = event.objectRef;
    requests.push({
      namespace: ref.namespace ?? "",
      apiGroup: ref.apiGroup ?? "",
      resource: ref.subresource ? `${ref.resource}/${ref.subresource}` : ref.resource!,
      verb: event.verb,
      name: ref.name,
      code: event.responseStatus?.code ?? 0,
      decision: event.annotations?.["authorization.k8s.io/decision"],
      uri: event.requestURI,
    });
  }
  return requests;
}

/** Whether a permission allows a request (RBAC's own rule: create is never limited by name). */
export function allows(permission: Permission, request: AuditedRequest): boolean {
  return (
    (permission.namespace === "" || permission.namespace === request.namespace) &&
    permission.apiGroup === request.apiGroup &&
    permission.resource === request.resource &&
    permission.verb === request.verb &&
    (permission.resourceNames.length === 0 || (request.name !== undefined && permission.resourceNames.includes(request.name)))
  );
}

/** A permission or request as one comparable line. */
export function describe(entry: { namespace: string; apiGroup: string; resource: string; verb: string; resourceNames?: string[] }): string {
  const names = entry.resourceNames?.length ? ` [${entry.resourceNames.join(",")}]` : "";
  return `${entry.namespace || "*"} ${entry.apiGroup || "core"}/${entry.resource} ${entry.verb}${names}`;
}
