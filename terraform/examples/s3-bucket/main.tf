# Bucket for Mailfleet's message bodies, with an IAM user whose key goes into a Kubernetes
# Secret (for a cluster without IRSA). With IRSA, set create_iam_user = false and
# iam_role_name to the service account's role instead.
terraform {
  required_version = ">= 1.3.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}

provider "aws" {
  region = "eu-west-1"
}

module "mailfleet_bucket" {
  source = "../../modules/s3-bucket"

  bucket_name                            = "example-mailfleet-bodies"
  versioning                             = true
  noncurrent_version_expiration_days     = 30
  abort_incomplete_multipart_upload_days = 2
  create_iam_user                        = true
  tags = {
    app = "mailfleet"
  }
}

output "bucket_name" {
  description = "Bucket for Mailfleet's storage.s3.bucket."
  value       = module.mailfleet_bucket.bucket_name
}

output "access_key_id" {
  description = "Access key ID for the mailfleet-s3 Secret."
  value       = module.mailfleet_bucket.access_key_id
  sensitive   = true
}

output "secret_access_key" {
  description = "Secret access key for the mailfleet-s3 Secret."
  value       = module.mailfleet_bucket.secret_access_key
  sensitive   = true
}
