# Every mail record of example.com in a Route 53 hosted zone. The DKIM public key is the p=
# value that `mailfleet dkim generate example.com` wrote (here a 2048-bit RSA key).
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

data "aws_route53_zone" "example" {
  name = "example.com."
}

module "mail_dns" {
  source = "../../modules/dns-route53"

  zone_id = data.aws_route53_zone.example.zone_id
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
