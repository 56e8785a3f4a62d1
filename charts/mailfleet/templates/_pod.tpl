{{/*
The mail pod template, shared by the embedded StatefulSet and the cluster Deployment.
*/}}
{{- define "mailfleet.podTemplate" -}}
{{- $ports := include "mailfleet.containerPorts" . | fromJson -}}
{{- $tlsSecret := include "mailfleet.tlsSecretName" . -}}
metadata:
  labels:
    {{- include "mailfleet.baseLabels" . | nindent 4 }}
    {{- include "mailfleet.selectorLabels" . | nindent 4 }}
  annotations:
    # Rolls the pods when the configuration changes.
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "mailfleet.fullname" . }}
  # The server never talks to the Kubernetes API.
  automountServiceAccountToken: false
  enableServiceLinks: false
  # server.shutdown_grace_secs for open sessions, plus time to flush and exit.
  terminationGracePeriodSeconds: {{ add (int64 .Values.server.shutdownGraceSecs) 15 }}
  securityContext:
    {{- include "mailfleet.podSecurityContext" . | nindent 4 }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if include "mailfleet.cluster" . }}
  topologySpreadConstraints:
    {{- range .Values.cluster.topologySpread.topologyKeys }}
    - maxSkew: {{ int64 $.Values.cluster.topologySpread.maxSkew }}
      topologyKey: {{ . }}
      whenUnsatisfiable: {{ $.Values.cluster.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "mailfleet.selectorLabels" $ | nindent 10 }}
    {{- end }}
  {{- end }}
  containers:
    - name: mailfleet
      image: {{ include "mailfleet.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["/usr/local/bin/mailfleet"]
      args: ["--config", "/etc/mailfleet/mailfleet.toml", "serve"]
      {{- with include "mailfleet.secretEnv" . }}
      env:
        {{- . | nindent 8 }}
      {{- end }}
      ports:
        {{- range $name, $port := $ports }}
        - name: {{ $name }}
          containerPort: {{ $port }}
          protocol: TCP
        {{- end }}
        - name: http
          containerPort: 8080
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 6
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: 5
        # /readyz waits up to http.readiness_timeout_ms (2 s) for the backends.
        timeoutSeconds: 3
        failureThreshold: 3
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 2
        failureThreshold: 60
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- include "mailfleet.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/mailfleet/mailfleet.toml
          subPath: mailfleet.toml
          readOnly: true
        - name: data
          mountPath: {{ .Values.server.dataDir }}
        - name: tmp
          mountPath: /tmp
        {{- if $tlsSecret }}
        # A directory mount, not subPath: the kubelet swaps the files when the Secret is
        # renewed and the server reloads them within tls.reload_interval_secs.
        - name: tls
          mountPath: /etc/mailfleet/tls
          readOnly: true
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "mailfleet.fullname" . }}
    - name: data
      {{- if include "mailfleet.cluster" . }}
      # Cluster mode keeps nothing on local disk that another front-end needs.
      emptyDir:
        sizeLimit: 1Gi
      {{- else }}
      persistentVolumeClaim:
        claimName: {{ include "mailfleet.fullname" . }}-data
      {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
    {{- if $tlsSecret }}
    - name: tls
      secret:
        secretName: {{ $tlsSecret }}
        defaultMode: 0440
    {{- end }}
{{- end }}
