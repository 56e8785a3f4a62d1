terraform {
  # optional() object attributes with defaults need 1.3; startswith() needs 1.3 too.
  required_version = ">= 1.3.0"

  required_providers {
    # Version 5 renamed cloudflare_record to cloudflare_dns_record and made SRV fields an
    # object attribute (data = { ... }); this module is written for that schema.
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = ">= 5.0, < 6.0"
    }
  }
}
