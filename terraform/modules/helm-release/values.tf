# Values derived from the variables; kept apart from main.tf so the tests can evaluate
# them with `terraform console`, which needs no provider.
locals {
  cluster = var.mode == "cluster"

  # The values contract with charts/mailfleet (see docs/terraform.md#helm-release): only
  # names of Secrets and the keys inside them, never a credential itself.
  derived_values = {
    mode         = var.mode
    replicaCount = var.replicas
    hostname     = var.hostname
    persistence = {
      size         = var.persistence.size
      storageClass = var.persistence.storage_class
      # The chart annotates its PVCs with helm.sh/resource-policy: keep when true, so
      # `helm uninstall` (and `terraform destroy` of this release) leaves the data behind.
      keep = var.persistence.keep
    }
  }

  # Only in cluster mode (a separate document, since the two modes' objects differ in type).
  storage_values = local.cluster ? {
    storage = {
      s3 = {
        bucket             = var.s3.bucket
        region             = var.s3.region
        endpoint           = var.s3.endpoint
        keyPrefix          = var.s3.key_prefix
        pathStyle          = var.s3.path_style
        existingSecret     = var.s3.existing_secret
        accessKeyIdKey     = var.s3.access_key_id_key
        secretAccessKeyKey = var.s3.secret_access_key_key
      }
      redis = {
        existingSecret = var.redis.existing_secret
        urlKey         = var.redis.url_key
        keyPrefix      = var.redis.key_prefix
      }
      scylla = {
        nodes             = var.scylla.nodes
        keyspace          = var.scylla.keyspace
        localDc           = var.scylla.local_dc
        replicationFactor = var.scylla.replication_factor
        existingSecret    = var.scylla.existing_secret
        usernameKey       = var.scylla.username_key
        passwordKey       = var.scylla.password_key
      }
    }
  } : null

  # Helm merges these documents in order: derived values, cluster storage, the caller's.
  values_documents = concat(
    [yamlencode(local.derived_values)],
    local.storage_values == null ? [] : [yamlencode(local.storage_values)],
    [yamlencode(var.values)],
  )
}

