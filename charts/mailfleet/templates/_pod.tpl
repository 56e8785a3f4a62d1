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
    {{- if and (include "mailfleet.operatorSidecar" .) (not (hasKey .Values.podAnnotations "kubectl.kubernetes.io/default-container")) }}
    # kubectl exec and logs without -c mean the server, not the operator beside it.
    kubectl.kubernetes.io/default-container: mailfleet
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "mailfleet.fullname" . }}
  # The server never talks to the Kubernetes API, so no container gets a token by default;
  # in embedded mode the operator container mounts one through its own projected volume
  # (kube-api-access), which no other container mounts.
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
        {{- . | trim | nindent 8 }}
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
    {{- if include "mailfleet.operatorSidecar" . }}
    # Embedded mode: the operator beside the server, on the same configuration and data
    # volume (SQLite in WAL mode is safe for two processes of one pod).
    {{- include "mailfleet.operatorContainer" . | nindent 4 }}
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
    {{- if include "mailfleet.operatorSidecar" . }}
    # The operator container's API credentials, in the layout of the volume the API server
    # adds for automountServiceAccountToken (what kube-rs's in-cluster configuration
    # reads): a token of the pod's ServiceAccount that the kubelet renews, the cluster's CA
    # and the namespace.
    - name: kube-api-access
      projected:
        sources:
          - serviceAccountToken:
              path: token
              expirationSeconds: 3607
          - configMap:
              name: kube-root-ca.crt
              items:
                - key: ca.crt
                  path: ca.crt
          - downwardAPI:
              items:
                - path: namespace
                  fieldRef:
                    apiVersion: v1
                    fieldPath: metadata.namespace
    {{- end }}
{{- end }}

{{/*
The operator container: in the operator Deployment (cluster mode) and in the embedded mail
pod. Both mount the mail configuration and a volume named "data" at server.dataDir.
*/}}
{{- define "mailfleet.operatorContainer" -}}
{{- $port := include "mailfleet.operatorPortName" . -}}
- name: operator
  image: {{ include "mailfleet.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/usr/local/bin/mailfleet-operator"]
  env:
    # The mail servers' configuration: the operator opens the same stores.
    - name: MAILFLEET_CONFIG
      value: /etc/mailfleet/mailfleet.toml
    # The leader-election identity and the namespace of the Lease and Secrets.
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- with include "mailfleet.secretEnv" . }}
    {{- . | trim | nindent 4 }}
    {{- end }}
  ports:
    - name: {{ $port }}
      containerPort: 8081
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $port }}
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 6
  {{- if not (include "mailfleet.operatorSidecar" .) }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ $port }}
    periodSeconds: 5
    timeoutSeconds: 3
    failureThreshold: 3
  {{- else }}
  # No readiness probe beside the server: a pod is ready when its server is, and an
  # operator that cannot reach the API server must not take the mail Service down with it.
  {{- end }}
  resources:
    {{- toYaml .Values.operator.resources | nindent 4 }}
  securityContext:
    {{- include "mailfleet.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/mailfleet/mailfleet.toml
      subPath: mailfleet.toml
      readOnly: true
    - name: data
      mountPath: {{ .Values.server.dataDir }}
    - name: tmp
      mountPath: /tmp
    {{- if include "mailfleet.operatorSidecar" . }}
    - name: kube-api-access
      mountPath: /var/run/secrets/kubernetes.io/serviceaccount
      readOnly: true
    {{- end }}
{{- end }}
