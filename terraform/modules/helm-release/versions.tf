terraform {
  required_version = ">= 1.3.0"

  required_providers {
    # Only arguments that kept their meaning from 2.x to 3.x are used (values, no set
    # blocks), so both major versions work.
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.12, < 4.0"
    }
  }
}
