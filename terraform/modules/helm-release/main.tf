resource "helm_release" "mailfleet" {
  name             = var.release_name
  namespace        = var.namespace
  create_namespace = var.create_namespace
  chart            = var.chart
  repository       = var.repository
  version          = var.chart_version

  # Two documents, merged by Helm in order: the derived values, then the caller's.
  values = local.values_documents

  wait            = var.wait
  atomic          = var.atomic
  timeout         = var.timeout
  cleanup_on_fail = true

  lifecycle {
    precondition {
      condition     = !local.cluster || (var.s3 != null && var.redis != null && var.scylla != null)
      error_message = "mode = \"cluster\" needs var.s3, var.redis and var.scylla."
    }
    precondition {
      condition     = local.cluster || var.replicas == 1
      error_message = "mode = \"embedded\" runs exactly one replica (one process per data directory); use mode = \"cluster\" to scale out."
    }
    precondition {
      condition     = !local.cluster || length(try(var.scylla.nodes, [])) > 0
      error_message = "scylla.nodes needs at least one contact point."
    }
  }
}
