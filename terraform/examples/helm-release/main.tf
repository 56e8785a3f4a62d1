# Mailfleet in cluster mode from a checkout of this repository. The Secrets named here are
# created beforehand (kubectl, External Secrets, Sealed Secrets...), so no credential passes
# through Helm values; for example, from the s3-bucket example's outputs:
#   kubectl -n mailfleet create secret generic mailfleet-s3 \
#     --from-literal=access-key-id="$(terraform output -raw access_key_id)" \
#     --from-literal=secret-access-key="$(terraform output -raw secret_access_key)"
terraform {
  required_version = ">= 1.3.0"
  required_providers {
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.12, < 4.0"
    }
  }
}

# The cluster credentials come from the kubeconfig, never from this file.
provider "helm" {}

module "mailfleet" {
  source = "../../modules/helm-release"

  chart     = "../../../charts/mailfleet"
  namespace = "mailfleet"
  hostname  = "mail.example.com"
  mode      = "cluster"
  replicas  = 3

  s3 = {
    bucket          = "example-mailfleet-bodies"
    region          = "eu-west-1"
    existing_secret = "mailfleet-s3"
  }
  redis = {
    existing_secret = "mailfleet-redis"
  }
  scylla = {
    nodes           = ["scylla-client.scylla:9042"]
    local_dc        = "eu-west-1"
    existing_secret = "mailfleet-scylla"
  }
  persistence = {
    size = "1Gi"
    keep = true
  }

  values = {
    resources = {
      requests = { cpu = "500m", memory = "512Mi" }
    }
  }
}

output "release_status" {
  description = "Helm's status of the Mailfleet release."
  value       = module.mailfleet.status
}
