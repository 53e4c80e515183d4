{{/* The chart's name, cut to 63 characters. */}}
{{- define "qfleet.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name, suffixed with the chart name unless it already contains it. */}}
{{- define "qfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* `helm.sh/chart`: name-version. */}}
{{- define "qfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator pod (never change them: a Deployment's selector is immutable). */}}
{{- define "qfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The recommended labels of every object of the chart. */}}
{{- define "qfleet.labels" -}}
helm.sh/chart: {{ include "qfleet.chart" . }}
{{ include "qfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: qfleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "qfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qfleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image. */}}
{{- define "qfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The runtime image: the default of every model's spec.runtime.image (and through it spec.serving.image). */}}
{{- define "qfleet.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtime.image.repository (default .Chart.AppVersion .Values.runtime.image.tag) -}}
{{- end -}}

{{/*
The operator's RBAC rules, the one place they are written. Called with a dict:
  scope: "all"       every rule (ClusterRole, clusterScoped: true)
         "namespace" the namespaced rules only (Role in the release namespace, clusterScoped: false)
         "cluster"   the cluster-scoped reads a namespaced install still needs (small ClusterRole)
Verbs are exact; nothing is "*". docs/operations.md explains each rule.
*/}}
{{- define "qfleet.rbac.rules" -}}
{{- $scope := .scope -}}
{{- if or (eq $scope "all") (eq $scope "cluster") }}
# Framework: Kopf discovers the resources it serves and follows CRD changes.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
{{- /* No namespaces rule: with --all-namespaces Kopf never lists them; with --namespace=<one> it tries, logs
"Not enough permissions to list namespaces" and falls back to that exact namespace, which is all it needs. */}}
{{- if or (eq $scope "all") (eq $scope "cluster") }}
# Application: admission reads the GPU Feature Discovery labels and allocatable GPUs of every Node (watched, cached
# as grouped views).
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
{{- end }}
{{- if or (eq $scope "all") (eq $scope "namespace") }}
# Framework: Kopf posts Events about its own problems.
# Application: one Event per pipeline transition (kopf.event, core v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Application: watch QuantizedModels; patch removes a person's consumed rollout action (JSON-patch test) and the
# finalizer qfleet 0.1.0 added.
- apiGroups: ["qfleet.io"]
  resources: ["quantizedmodels"]
  verbs: ["list", "watch", "patch"]
# Application: the status is written whole with a PUT guarded by resourceVersion.
- apiGroups: ["qfleet.io"]
  resources: ["quantizedmodels/status"]
  verbs: ["update"]
# Application: Jobs carry an ownerReference with blockOwnerDeletion: true, which clusters that enforce
# OwnerReferencesPermissionEnforcement allow only with update on the owner's finalizers.
- apiGroups: ["qfleet.io"]
  resources: ["quantizedmodels/finalizers"]
  verbs: ["update"]
# Application: calibration, build and evaluation Jobs (watched, created with a deterministic name).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create"]
# Application: the Jobs' pods, for their termination messages and scheduling complaints (watched).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Application: a serving Deployment per revision (watched), created with a deterministic name and only ever resized
# afterwards, through the scale subresource.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
# Application: the stable and canary Services (watched); promotion moves their selector.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch"]
# Application: the user's HTTPRoute named in spec.rollout.trafficRouting.gatewayAPI.httpRoute: watched, and its
# rules' backendRef weights set (guarded by its resourceVersion).
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}
