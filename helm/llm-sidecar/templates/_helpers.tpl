{{/*
Helpers. Every named template here needs only .Values (this chart's values) and
.Release, so another chart can call them with
  (dict "Values" (index .Values "llm-sidecar") "Release" .Release)
*/}}

{{/* The name of the chart's objects. */}}
{{- define "llm-sidecar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "llm-sidecar" .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llm-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ default "llm-sidecar" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "llm-sidecar.labels" -}}
{{ include "llm-sidecar.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Chart }}
app.kubernetes.io/version: {{ .AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Name .Version | replace "+" "_" }}
{{- end }}
{{- end -}}

{{- define "llm-sidecar.configMapName" -}}
{{- default (printf "%s-config" (include "llm-sidecar.fullname" .)) .Values.existingConfigMap -}}
{{- end -}}

{{- define "llm-sidecar.caSecretName" -}}
{{- default (printf "%s-ca" (include "llm-sidecar.fullname" .)) .Values.httpsProxy.ca.existingSecret -}}
{{- end -}}

{{/* The image reference: a digest wins over the tag. */}}
{{- define "llm-sidecar.image" -}}
{{- $v := .Values.image -}}
{{- if $v.digest -}}
{{- printf "%s@%s" $v.repository $v.digest -}}
{{- else -}}
{{- printf "%s:%s" $v.repository $v.tag -}}
{{- end -}}
{{- end -}}

{{/*
The sidecar's config: .Values.config with the keys the chart owns set from the values
(listeners from ports; the CA directory in HTTPS_PROXY mode).
*/}}
{{- define "llm-sidecar.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- if hasKey $cfg "listeners" -}}
{{- fail "llm-sidecar: config.listeners is set by the chart from .Values.ports; remove it" -}}
{{- end -}}
{{- $listeners := dict "reverse" (printf "127.0.0.1:%d" (int .Values.ports.reverse)) "admin" (printf "0.0.0.0:%d" (int .Values.ports.admin)) -}}
{{- if .Values.httpsProxy.enabled -}}
{{- $_ := set $listeners "forward" (printf "127.0.0.1:%d" (int .Values.ports.forward)) -}}
{{- $forward := deepCopy (default dict $cfg.forward) -}}
{{- /* The CA comes from a Secret: a missing file must fail start-up, never mint a new CA. */ -}}
{{- $_ := set $forward "ca" (dict "dir" .Values.httpsProxy.ca.mountPath "create_if_missing" false) -}}
{{- $_ := set $cfg "forward" $forward -}}
{{- end -}}
{{- $_ := set $cfg "listeners" $listeners -}}
{{- toYaml $cfg -}}
{{- end -}}
