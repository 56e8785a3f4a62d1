terraform {
  required_version = ">= 1.3.0"

  required_providers {
    # 5.x: the split bucket resources (aws_s3_bucket_* configuration resources) and
    # lifecycle rules with an explicit filter.
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}
