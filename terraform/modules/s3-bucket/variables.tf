variable "bucket_name" {
  description = "Name of the S3 bucket that holds Mailfleet's message bodies (globally unique; 3-63 lower-case letters, digits, dots and hyphens)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name)) && !can(regex("\\.\\.", var.bucket_name)) && !can(regex("^\\d+\\.\\d+\\.\\d+\\.\\d+$", var.bucket_name))
    error_message = "bucket_name must be 3-63 lower-case letters, digits, dots and hyphens, start and end with a letter or digit, have no \"..\" and not look like an IP address."
  }
}

variable "tags" {
  description = "Tags added to every resource this module creates."
  type        = map(string)
  default     = {}
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket while it still holds objects. Leave false in production: the bucket holds every stored message body."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "ARN of a customer-managed KMS key for server-side encryption (SSE-KMS, with S3 Bucket Keys). Null uses SSE-S3 (AES-256, keys managed by S3). With a key, the IAM policy also grants kms:Decrypt/GenerateDataKey on it."
  type        = string
  default     = null
  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/.+$", coalesce(var.kms_key_arn, "x")))
    error_message = "kms_key_arn must be a KMS key or alias ARN (arn:aws:kms:<region>:<account>:key/<id>)."
  }
}

variable "versioning" {
  description = "Enable S3 versioning, so an overwritten or deleted body can be recovered. Mailfleet writes each body once under a new key, so versions only accumulate for deletions; noncurrent versions expire after var.noncurrent_version_expiration_days."
  type        = bool
  default     = false
}

variable "noncurrent_version_expiration_days" {
  description = "With versioning, days after which a deleted or overwritten object's old version is removed for good (0 keeps them forever)."
  type        = number
  default     = 30
  validation {
    condition     = var.noncurrent_version_expiration_days >= 0 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number of days, 0 or more."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which S3 aborts a multipart upload that was started but never completed (a front-end that died mid-upload) and frees its parts, which are billed but invisible in listings."
  type        = number
  default     = 2
  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1 && floor(var.abort_incomplete_multipart_upload_days) == var.abort_incomplete_multipart_upload_days
    error_message = "abort_incomplete_multipart_upload_days must be a whole number of days, 1 or more."
  }
}

variable "create_iam_user" {
  description = "Create an IAM user with an access key for Mailfleet (for clusters outside AWS or without IRSA/Pod Identity). False attaches the policy to var.iam_role_name instead, or only creates the policy when that is null too."
  type        = bool
  default     = false
}

variable "iam_user_name" {
  description = "Name of the IAM user created when var.create_iam_user is true. Null derives \"<bucket_name>-mailfleet\"."
  type        = string
  default     = null
  validation {
    condition     = var.iam_user_name == null || can(regex("^[A-Za-z0-9+=,.@_-]{1,64}$", coalesce(var.iam_user_name, "x")))
    error_message = "iam_user_name must be 1-64 characters from letters, digits and +=,.@_-."
  }
}

variable "iam_role_name" {
  description = "Name of an existing IAM role (for example the IRSA or EKS Pod Identity role of Mailfleet's service account) to attach the bucket policy to. Null attaches it to no role."
  type        = string
  default     = null
}

variable "iam_path" {
  description = "IAM path of the user and policy this module creates."
  type        = string
  default     = "/mailfleet/"
  validation {
    condition     = can(regex("^/([A-Za-z0-9+=,.@_-]+/)*$", var.iam_path))
    error_message = "iam_path must start and end with / (for example /mailfleet/)."
  }
}
