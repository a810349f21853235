{{- define "kubetune.fullname" -}}{{ printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "kubetune.imageRef" -}}{{ printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}{{- end -}}
{{- define "kubetune.image" -}}{{ include "kubetune.imageRef" (dict "image" .Values.image "root" .) }}{{- end -}}
{{- define "kubetune.labels" -}}
app.kubernetes.io/name: kubetune
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{- define "kubetune.selector" -}}
app.kubernetes.io/name: kubetune
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
{{- /* The operator's --queues value from queues.*.enabled (empty when both are off). */ -}}
{{- define "kubetune.queueModes" -}}
{{- $modes := list -}}
{{- if .Values.queues.builtIn.enabled }}{{ $modes = append $modes "builtin" }}{{ end -}}
{{- if .Values.queues.kueue.enabled }}{{ $modes = append $modes "kueue" }}{{ end -}}
{{ join "," $modes }}
{{- end -}}
