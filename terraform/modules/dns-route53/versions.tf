terraform {
  # optional() object attributes with defaults need 1.3; startswith() needs 1.3 too.
  required_version = ">= 1.3.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}
