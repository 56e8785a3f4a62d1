variable "release_name" {
  description = "Name of the Helm release."
  type        = string
  default     = "mailfleet"
  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,51}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be a DNS label of at most 53 characters (Helm's limit): lower-case letters, digits and inner hyphens."
  }
}

variable "namespace" {
  description = "Kubernetes namespace of the release."
  type        = string
  default     = "mailfleet"
  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS label: lower-case letters, digits and inner hyphens, at most 63 characters."
  }
}

variable "create_namespace" {
  description = "Create var.namespace if it does not exist."
  type        = bool
  default     = true
}

variable "chart" {
  description = "The Mailfleet chart: a path to charts/mailfleet in a checkout of this repository (relative to the root module, for example \"../../charts/mailfleet\"), or the chart name when var.repository is set."
  type        = string
}

variable "repository" {
  description = "Helm repository URL (or oci:// registry) holding the chart. Null when var.chart is a local path."
  type        = string
  default     = null
}

variable "chart_version" {
  description = "Chart version to install from var.repository. Null takes the newest (pin it in production)."
  type        = string
  default     = null
}

variable "mode" {
  description = "\"embedded\": one replica with SQLite, local blobs and in-process coordination on a persistent volume. \"cluster\": any number of stateless replicas with bodies in S3, coordination in Redis and metadata in ScyllaDB (var.s3, var.redis and var.scylla are then required)."
  type        = string
  default     = "embedded"
  validation {
    condition     = contains(["embedded", "cluster"], var.mode)
    error_message = "mode must be embedded or cluster."
  }
}

variable "replicas" {
  description = "Number of Mailfleet pods. Embedded mode supports exactly 1 (one process per data directory)."
  type        = number
  default     = 1
  validation {
    condition     = var.replicas >= 1 && floor(var.replicas) == var.replicas
    error_message = "replicas must be a whole number, 1 or more."
  }
}

variable "hostname" {
  description = "Mailfleet's server.hostname: the name it greets with and the MX/submission host clients and peers connect to (for example mail.example.com)."
  type        = string
  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.hostname))
    error_message = "hostname must be a lower-case fully qualified host name such as mail.example.com."
  }
}

variable "persistence" {
  description = "Persistent volume of each pod (the whole data directory in embedded mode; the TLS/DKIM key directory in cluster mode): size, storage class (null for the cluster default) and whether `helm uninstall` keeps the claim (keep = true sets the chart's helm.sh/resource-policy: keep)."
  type = object({
    size          = optional(string, "10Gi")
    storage_class = optional(string)
    keep          = optional(bool, true)
  })
  default = {}
  validation {
    condition     = can(regex("^[0-9]+(Ki|Mi|Gi|Ti)$", var.persistence.size))
    error_message = "persistence.size must be a Kubernetes quantity such as 10Gi."
  }
}

variable "s3" {
  description = "Cluster mode: the S3 bucket for message bodies (for example the s3-bucket module's outputs) and the name of an existing Kubernetes Secret holding the access key, with the keys inside it. existing_secret = null uses the pod's own identity (IRSA / EKS Pod Identity / instance role) instead of static keys."
  type = object({
    bucket                = string
    region                = string
    endpoint              = optional(string, "")
    key_prefix            = optional(string, "blobs/")
    path_style            = optional(bool, false)
    existing_secret       = optional(string)
    access_key_id_key     = optional(string, "access-key-id")
    secret_access_key_key = optional(string, "secret-access-key")
  })
  default = null
}

variable "redis" {
  description = "Cluster mode: name of an existing Kubernetes Secret whose url_key holds the redis:// or rediss:// URL (it may carry a password, so it never goes into Helm values)."
  type = object({
    existing_secret = string
    url_key         = optional(string, "url")
    key_prefix      = optional(string, "mailfleet:")
  })
  default = null
}

variable "scylla" {
  description = "Cluster mode: ScyllaDB contact points, keyspace, local datacenter and an optional existing Kubernetes Secret holding username/password (null for no authentication)."
  type = object({
    nodes              = list(string)
    keyspace           = optional(string, "mailfleet")
    local_dc           = optional(string, "")
    replication_factor = optional(number, 3)
    existing_secret    = optional(string)
    username_key       = optional(string, "username")
    password_key       = optional(string, "password")
  })
  default = null
  validation {
    condition     = var.scylla == null || can(regex("^[A-Za-z0-9_]{1,48}$", try(var.scylla.keyspace, "")))
    error_message = "scylla.keyspace must be 1-48 letters, digits or underscores."
  }
}

variable "values" {
  description = "More chart values, merged over the ones this module derives (later keys win, deeply for maps as Helm merges values files). Passed through unchanged; keys whose names look like credentials are refused: reference a Secret instead."
  type        = any
  default     = {}
  validation {
    # Keys such as password, secretAccessKey or token anywhere in the tree: secrets belong in
    # Kubernetes Secrets, since Helm values are stored in plain text in the release Secret
    # and shown by `helm get values`.
    condition     = !can(regex("(?i)\"[a-z_]*(password|passwd|secret_?access_?key|secretkey|token|private_?key)\"\\s*:", jsonencode(var.values)))
    error_message = "values must not contain credentials (keys named like password, secretAccessKey, token or privateKey): store them in a Kubernetes Secret and pass its name (var.s3/redis/scylla existing_secret)."
  }
}

variable "wait" {
  description = "Wait until every pod of the release is ready before Terraform marks it created."
  type        = bool
  default     = true
}

variable "atomic" {
  description = "Roll back a failed install or upgrade automatically."
  type        = bool
  default     = true
}

variable "timeout" {
  description = "Seconds Helm waits for the release's resources (with var.wait)."
  type        = number
  default     = 600
  validation {
    condition     = var.timeout > 0
    error_message = "timeout must be positive."
  }
}
