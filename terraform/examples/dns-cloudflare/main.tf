# Every mail record of example.com in a Cloudflare zone. The DKIM public key is the p=
# value that `mailfleet dkim generate example.com` wrote (here a 2048-bit RSA key).
terraform {
  required_version = ">= 1.3.0"
  required_providers {
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = ">= 5.0, < 6.0"
    }
  }
}

# The API token comes from the CLOUDFLARE_API_TOKEN environment variable (Zone.DNS edit
# permission on this zone only), never from a file in the repository.
provider "cloudflare" {}

variable "cloudflare_zone_id" {
  description = "Cloudflare zone ID of example.com (Overview page of the zone)."
  type        = string
}

module "mail_dns" {
  source = "../../modules/dns-cloudflare"

  zone_id = var.cloudflare_zone_id
  domain  = "example.com"
  mx = [
    { host = "mail.example.com", priority = 10 },
  ]
  spf = {
    mechanisms = ["mx"]
    all        = "-all"
  }
  dkim_keys = [
    {
      selector   = "mailfleet-rsa"
      algorithm  = "rsa"
      public_key = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxhvYyWEhPQmigbXiEOoUcRCnEsyKFhvYUOq2VCaMj91ZqlRa8yr+kmIRGCEeY6D0CaBWzp1zvOJBAYdukMm3tGPHnkRPi4tC/GU/vUqCjQkk1N5zhjcwUuKsKCZs+ae3vMPMB0jIO+e9AbYmqKqNEjEVdNpHb8dlOspvBmD7xj9anw4cgq/YWeUrCWn3Tr1NaRVB1vX3BwPvAmxmOfuqyO5dBCsOlQ+1VqwsHwtqwuvLrXhmnfyg/8d+jqMAQEHmyTdGa9AJ26J5dsPWfcwTL5Zh4czpJ1CTeNyVVRujdCVoWHjgabZ3Ck/JcZwoCMUyHijhsSmyKkwbrVm6Q2SqHQIDAQAB"
    },
  ]
  dmarc = {
    policy = "quarantine"
    rua    = ["mailto:dmarc-reports@example.com"]
    adkim  = "s"
    aspf   = "s"
  }
  mta_sts = {
    id                = "20261203T000000"
    policy_host_cname = "mailfleet-mta-sts.example-lb.net"
  }
  tls_rpt_rua = ["mailto:tls-reports@example.com"]
  autoconfig = {
    host = "mail.example.com"
  }
}

output "dkim_record_names" {
  description = "DKIM record names created."
  value       = module.mail_dns.dkim_record_names
}
