output "release_name" {
  description = "Name of the Helm release."
  value       = helm_release.mailfleet.name
}

output "namespace" {
  description = "Namespace the release is installed in."
  value       = helm_release.mailfleet.namespace
}

output "chart_version" {
  description = "Version of the chart that is installed."
  value       = try(helm_release.mailfleet.metadata[0].version, helm_release.mailfleet.metadata.version)
}

output "status" {
  description = "Status of the release as Helm reports it (deployed, failed, ...)."
  value       = helm_release.mailfleet.status
}

output "values_documents" {
  description = "The values documents passed to Helm, in merge order (derived values, cluster storage, var.values); they hold Secret names only, never credentials."
  value       = local.values_documents
}
