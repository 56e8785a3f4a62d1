output "bucket_name" {
  description = "Name of the bucket (Mailfleet's S3 bucket setting)."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.this.arn
}

output "bucket_region" {
  description = "Region the bucket is in (Mailfleet's S3 region setting)."
  value       = aws_s3_bucket.this.region
}

output "bucket_regional_domain_name" {
  description = "Regional endpoint host name of the bucket."
  value       = aws_s3_bucket.this.bucket_regional_domain_name
}

output "access_policy_arn" {
  description = "ARN of the least-privilege IAM policy for Mailfleet, to attach to other roles if needed."
  value       = aws_iam_policy.access.arn
}

output "iam_user_name" {
  description = "Name of the IAM user created for Mailfleet, or null when var.create_iam_user is false."
  value       = try(aws_iam_user.mailfleet[0].name, null)
}

output "access_key_id" {
  description = "Access key ID of the IAM user, or null when var.create_iam_user is false. Put it in the Kubernetes Secret the chart reads, never in Helm values."
  value       = try(aws_iam_access_key.mailfleet[0].id, null)
  sensitive   = true
}

output "secret_access_key" {
  description = "Secret access key of the IAM user, or null when var.create_iam_user is false. Stored in the Terraform state: keep the state encrypted and access-controlled."
  value       = try(aws_iam_access_key.mailfleet[0].secret, null)
  sensitive   = true
}
