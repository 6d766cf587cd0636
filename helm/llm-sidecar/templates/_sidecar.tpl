{{/*
The sidecar's pod-spec parts, for this chart's Deployment and for other charts.

In your own chart (with this one as a dependency and llm-sidecar.deployment.enabled:
false), with $sc := dict "Values" (index .Values "llm-sidecar") "Release" .Release :

  spec:
    initContainers:
      {{- include "llm-sidecar.initContainers" $sc | nindent 6 }}
    containers:
      {{- include "llm-sidecar.containers" $sc | nindent 6 }}
      - name: app
        env:
          {{- include "llm-sidecar.appEnv" $sc | nindent 10 }}
        volumeMounts:
          {{- include "llm-sidecar.appVolumeMounts" $sc | nindent 10 }}
    volumes:
      {{- include "llm-sidecar.volumes" $sc | nindent 6 }}

Each template renders YAML list items (possibly none).
*/}}

{{/* The sidecar container (one list item). */}}
{{- define "llm-sidecar.container" -}}
{{- $v := .Values -}}
- name: llm-sidecar
  image: {{ include "llm-sidecar.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $v.nativeSidecar }}
  # A native sidecar: started before, and stopped after, the app containers.
  restartPolicy: Always
  {{- end }}
  args: ["run"]
  env:
    - name: LLM_SIDECAR_CONFIG
      value: {{ printf "%s/sidecar.yaml" $v.configMountPath | quote }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - { name: llm-reverse, containerPort: {{ $v.ports.reverse }}, protocol: TCP }
    {{- if $v.httpsProxy.enabled }}
    - { name: llm-forward, containerPort: {{ $v.ports.forward }}, protocol: TCP }
    {{- end }}
    - { name: llm-admin, containerPort: {{ $v.ports.admin }}, protocol: TCP }
  startupProbe:
    httpGet: { path: /readyz, port: {{ $v.ports.admin }} }
    {{- toYaml $v.probes.startup | nindent 4 }}
  readinessProbe:
    httpGet: { path: /readyz, port: {{ $v.ports.admin }} }
    {{- toYaml $v.probes.readiness | nindent 4 }}
  livenessProbe:
    httpGet: { path: /healthz, port: {{ $v.ports.admin }} }
    {{- toYaml $v.probes.liveness | nindent 4 }}
  {{- if not $v.nativeSidecar }}
  lifecycle:
    # Containers start in order and the next one waits for this hook: the app starts
    # once the sidecar answers /readyz.
    postStart:
      exec: { command: ["/usr/local/bin/llm-sidecar", "wait-ready", "--timeout", "60s"] }
    # Keep serving the app while it drains; SIGTERM (then config.server.grace_period for
    # requests in flight) comes after.
    preStop:
      exec: { command: ["/usr/local/bin/llm-sidecar", "sleep", "{{ $v.classicPreStopSeconds }}s"] }
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - { name: llm-sidecar-config, mountPath: {{ $v.configMountPath | quote }}, readOnly: true }
    - { name: llm-sidecar-keys, mountPath: {{ $v.secrets.mountPath | quote }}, readOnly: true }
    {{- if $v.httpsProxy.enabled }}
    - { name: llm-sidecar-ca, mountPath: {{ $v.httpsProxy.ca.mountPath | quote }}, readOnly: true }
    {{- end }}
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
HTTPS_PROXY mode: writes the app's trust bundle (Mozilla's roots plus the CA) into the
shared emptyDir, before the sidecar and the app start. Reads only ca.pem.
*/}}
{{- define "llm-sidecar.trustBundleContainer" -}}
{{- $v := .Values -}}
{{- if $v.httpsProxy.enabled -}}
- name: llm-sidecar-trust
  image: {{ include "llm-sidecar.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args: ["ca", "print", "--dir", {{ $v.httpsProxy.ca.mountPath | quote }}, "--bundle", "--out", {{ printf "%s/ca-bundle.pem" $v.httpsProxy.trustMountPath | quote }}]
  resources:
    requests: { cpu: 10m, memory: 16Mi }
    limits: { cpu: 100m, memory: 32Mi }
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - { name: llm-sidecar-ca, mountPath: {{ $v.httpsProxy.ca.mountPath | quote }}, readOnly: true }
    - { name: llm-sidecar-trust, mountPath: {{ $v.httpsProxy.trustMountPath | quote }} }
{{- end -}}
{{- end -}}

{{/* List items for the pod's initContainers (before any of your own). */}}
{{- define "llm-sidecar.initContainers" -}}
{{- $items := list -}}
{{- with (include "llm-sidecar.trustBundleContainer" .) }}{{ $items = append $items . }}{{ end -}}
{{- if .Values.nativeSidecar }}{{ $items = append $items (include "llm-sidecar.container" .) }}{{ end -}}
{{- join "\n" $items -}}
{{- end -}}

{{/* List items for the pod's containers (classic pattern only; place before the app). */}}
{{- define "llm-sidecar.containers" -}}
{{- if not .Values.nativeSidecar -}}
{{- include "llm-sidecar.container" . -}}
{{- end -}}
{{- end -}}

{{/* The pod's volumes for the sidecar. */}}
{{- define "llm-sidecar.volumes" -}}
{{- $v := .Values -}}
# A directory mount (no subPath), so the kubelet's updates reach the running sidecar.
- name: llm-sidecar-config
  configMap:
    name: {{ include "llm-sidecar.configMapName" . }}
- name: llm-sidecar-keys
  secret:
    secretName: {{ $v.secrets.existingSecret }}
    optional: {{ $v.secrets.optional }}
    defaultMode: {{ $v.secrets.defaultMode }}
{{- if $v.httpsProxy.enabled }}
- name: llm-sidecar-ca
  secret:
    secretName: {{ include "llm-sidecar.caSecretName" . }}
    defaultMode: {{ $v.secrets.defaultMode }}
    items:
      - { key: ca.pem, path: ca.pem }
      - { key: intermediate.pem, path: intermediate.pem }
      - { key: intermediate.key, path: intermediate.key }
- name: llm-sidecar-trust
  emptyDir: { sizeLimit: 1Mi }
{{- end }}
{{- with $v.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Env list items for the app container: base URLs, placeholder keys, proxy settings. */}}
{{- define "llm-sidecar.appEnv" -}}
{{- $v := .Values -}}
{{- range $name, $path := $v.appEnv.baseUrls }}
- name: {{ $name }}
  value: {{ printf "http://127.0.0.1:%d%s" (int $v.ports.reverse) $path | quote }}
{{- end }}
{{- range $name, $value := $v.appEnv.placeholderKeys }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- if $v.httpsProxy.enabled }}
{{- $proxy := printf "http://127.0.0.1:%d" (int $v.ports.forward) }}
{{- $noProxy := concat (list "127.0.0.1" "localhost" "::1" ".svc" ".cluster.local") $v.httpsProxy.noProxy | join "," }}
{{- $bundle := printf "%s/ca-bundle.pem" $v.httpsProxy.trustMountPath }}
{{- range $name := list "HTTPS_PROXY" "https_proxy" }}
- name: {{ $name }}
  value: {{ $proxy | quote }}
{{- end }}
{{- range $name := list "NO_PROXY" "no_proxy" }}
- name: {{ $name }}
  value: {{ $noProxy | quote }}
{{- end }}
{{- range $name := list "SSL_CERT_FILE" "REQUESTS_CA_BUNDLE" "CURL_CA_BUNDLE" "NODE_EXTRA_CA_CERTS" }}
- name: {{ $name }}
  value: {{ $bundle | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* volumeMounts list items for the app container (the trust bundle, in HTTPS_PROXY mode). */}}
{{- define "llm-sidecar.appVolumeMounts" -}}
{{- if .Values.httpsProxy.enabled -}}
- { name: llm-sidecar-trust, mountPath: {{ .Values.httpsProxy.trustMountPath | quote }}, readOnly: true }
{{- end -}}
{{- end -}}
