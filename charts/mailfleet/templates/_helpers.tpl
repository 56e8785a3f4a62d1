{{/*
Names. The base name is at most 54 characters so that "<base>-operator" and the other
suffixed names stay within the 63 characters of a label value and a DNS label.
*/}}
{{- define "mailfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "mailfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mailfleet.operatorName" -}}
{{- printf "%s-operator" (include "mailfleet.fullname" .) }}
{{- end }}

{{- define "mailfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "mailfleet.labels" -}}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "mailfleet.baseLabels" . }}
{{- end }}

{{/* The labels besides name and instance (pod templates add their selector labels). */}}
{{- define "mailfleet.baseLabels" -}}
helm.sh/chart: {{ include "mailfleet.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailfleet
{{- end }}

{{/* Selector of the mail pods. */}}
{{- define "mailfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* Selector of the operator pods. */}}
{{- define "mailfleet.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The image, by digest when one is given. */}}
{{- define "mailfleet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "mailfleet.cluster" -}}
{{- if eq .Values.mode "cluster" }}true{{ end }}
{{- end }}

{{/*
Where the operator runs (with operator.enabled): in cluster mode its own Deployment
(templates/operator.yaml); in embedded mode a second container of the StatefulSet's pod
(_pod.tpl), because only that pod can mount the ReadWriteOnce volume holding SQLite.
"true" for the embedded sidecar.
*/}}
{{- define "mailfleet.operatorSidecar" -}}
{{- if and .Values.operator.enabled (not (include "mailfleet.cluster" .)) }}true{{ end }}
{{- end }}

{{/*
The ServiceAccount the operator's ClusterRole and Role are bound to: its own in cluster
mode, the mail pods' in embedded mode (the sidecar runs in their pod, and only it mounts a
token of that account).
*/}}
{{- define "mailfleet.operatorServiceAccount" -}}
{{- if include "mailfleet.cluster" . }}
{{- include "mailfleet.operatorName" . }}
{{- else }}
{{- include "mailfleet.fullname" . }}
{{- end }}
{{- end }}

{{/*
Name of the operator's port 8081 (metrics, probes) in its pod. Beside the mail container a
plain "metrics" would be ambiguous; a port name has at most 15 characters (IANA service
name), so not "operator-metrics".
*/}}
{{- define "mailfleet.operatorPortName" -}}
{{- if include "mailfleet.operatorSidecar" . }}op-metrics{{ else }}metrics{{ end }}
{{- end }}

{{/* The Secret holding the certificate, or nothing for the self-signed one. */}}
{{- define "mailfleet.tlsSecretName" -}}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else if .Values.certManager.enabled }}
{{- printf "%s-tls" (include "mailfleet.fullname" .) }}
{{- end }}
{{- end }}

{{/* The Secret the chart creates for credentials given in values. */}}
{{- define "mailfleet.storageSecretName" -}}
{{- printf "%s-storage" (include "mailfleet.fullname" .) }}
{{- end }}

{{/*
Which credentials come from the chart's own Secret: a non-empty string (true) per backend.
*/}}
{{- define "mailfleet.s3Inline" -}}
{{- if and (include "mailfleet.cluster" .) (not .Values.storage.s3.existingSecret) .Values.storage.s3.accessKeyId }}true{{ end }}
{{- end }}
{{- define "mailfleet.redisInline" -}}
{{- if and (include "mailfleet.cluster" .) (not .Values.storage.redis.existingSecret) .Values.storage.redis.url }}true{{ end }}
{{- end }}
{{- define "mailfleet.scyllaInline" -}}
{{- if and (include "mailfleet.cluster" .) (not .Values.storage.scylla.existingSecret) .Values.storage.scylla.username }}true{{ end }}
{{- end }}

{{/*
The container ports. The pods run as a non-root user without capabilities, so they cannot
bind ports below 1024; the mail Service maps the standard ports onto these.
*/}}
{{- define "mailfleet.containerPorts" -}}
{{- dict "smtp" 2525 "submission" 5870 "submissions" 4650 "imap" 1430 "imaps" 9930 "pop3" 1100 "pop3s" 9950 "managesieve" 4190 | toJson }}
{{- end }}

{{/*
Environment variables overriding configuration keys (MAILFLEET_SECTION__KEY) with values
from Secrets. The variable names the Secret key refers to are TOML-parsed by the server: a
secret that is valid TOML by itself (only digits, true/false, a quoted string) must be
stored TOML-quoted, see docs/kubernetes.md.
*/}}
{{- define "mailfleet.secretEnv" -}}
{{- if include "mailfleet.cluster" . }}
{{- $s3 := .Values.storage.s3 }}
{{- $s3Secret := $s3.existingSecret | default (ternary (include "mailfleet.storageSecretName" .) "" (eq (include "mailfleet.s3Inline" .) "true")) }}
{{- if $s3Secret }}
- name: MAILFLEET_STORAGE__S3__ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3Secret }}
      key: {{ $s3.accessKeyIdKey }}
- name: MAILFLEET_STORAGE__S3__SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3Secret }}
      key: {{ $s3.secretAccessKeyKey }}
{{- end }}
{{- $redis := .Values.storage.redis }}
{{- /* With only clusterNodes there is no URL to pass (the server ignores it then). */}}
{{- if or $redis.existingSecret $redis.url }}
- name: MAILFLEET_STORAGE__REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ $redis.existingSecret | default (include "mailfleet.storageSecretName" .) }}
      key: {{ $redis.urlKey }}
{{- end }}
{{- $scylla := .Values.storage.scylla }}
{{- $scyllaSecret := $scylla.existingSecret | default (ternary (include "mailfleet.storageSecretName" .) "" (eq (include "mailfleet.scyllaInline" .) "true")) }}
{{- if $scyllaSecret }}
- name: MAILFLEET_STORAGE__SCYLLA__USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $scyllaSecret }}
      key: {{ $scylla.usernameKey }}
- name: MAILFLEET_STORAGE__SCYLLA__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $scyllaSecret }}
      key: {{ $scylla.passwordKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* Security context of every container. */}}
{{- define "mailfleet.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Security context of every pod. */}}
{{- define "mailfleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Checks of values the schema cannot express. */}}
{{- define "mailfleet.validate" -}}
{{- if and (include "mailfleet.cluster" .) (not (include "mailfleet.tlsSecretName" .)) }}
{{- fail "mode: cluster needs a certificate shared by every front-end: set tls.existingSecret or certManager.enabled (without one, each pod would generate its own self-signed certificate)" }}
{{- end }}
{{- if lt (int64 .Values.smtp.maxInflightBytes) (int64 .Values.smtp.maxMessageSize) }}
{{- fail "smtp.maxInflightBytes must be at least smtp.maxMessageSize (else a message of the largest size is never accepted)" }}
{{- end }}
{{- if and (include "mailfleet.cluster" .) (not .Values.storage.scylla.existingSecret) (ne (empty .Values.storage.scylla.username) (empty .Values.storage.scylla.password)) }}
{{- fail "set both storage.scylla.username and storage.scylla.password, or neither (or use storage.scylla.existingSecret)" }}
{{- end }}
{{- end }}
