{{/* Names, labels and the pieces every workload shares. */}}

{{- define "trialbridge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "trialbridge.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "trial-store"). */}}
{{- define "trialbridge.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "trialbridge.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{/* Non-root, read-only root filesystem, no privileges: every container. */}}
{{- define "trialbridge.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: [ALL]
{{- end -}}

{{/* Environment every component shares: logging and OpenTelemetry. */}}
{{- define "trialbridge.commonEnv" -}}
- name: TRIALBRIDGE_LOG
  value: {{ .Values.log | quote }}
- name: TRIALBRIDGE_LOG_FORMAT
  value: json
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .Values.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.otel.samplerArg | quote }}
{{- end }}
{{- end -}}

{{- define "trialbridge.storeUrl" -}}
{{- if .Values.gateway.storeUrl -}}
{{ .Values.gateway.storeUrl }}
{{- else -}}
{{ printf "http://%s-store:%d/fhir" (include "trialbridge.fullname" .) (int .Values.store.service.httpPort) }}
{{- end -}}
{{- end -}}

{{- /* The Host values the gateway's API answers to: its Service's names, and apiHosts. */ -}}
{{- define "trialbridge.gatewayHosts" -}}
{{- $svc := printf "%s-gateway" (include "trialbridge.fullname" .) -}}
{{- $port := int .Values.gateway.service.httpPort -}}
{{- $hosts := list (printf "%s:%d" $svc $port) (printf "%s.%s.svc:%d" $svc .Release.Namespace $port) (printf "%s.%s.svc.cluster.local:%d" $svc .Release.Namespace $port) -}}
{{- join "," (concat $hosts .Values.gateway.apiHosts) -}}
{{- end -}}
