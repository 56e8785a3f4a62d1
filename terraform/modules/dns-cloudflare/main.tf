resource "cloudflare_dns_record" "txt" {
  for_each = local.cloudflare_txt

  zone_id = var.zone_id
  name    = each.value.name
  type    = "TXT"
  ttl     = var.ttl
  content = each.value.content
}

resource "cloudflare_dns_record" "mx" {
  for_each = { for m in local.mx : "${m.priority}-${m.host}" => m }

  zone_id  = var.zone_id
  name     = local.domain
  type     = "MX"
  ttl      = var.ttl
  content  = each.value.host
  priority = each.value.priority
}

resource "cloudflare_dns_record" "srv" {
  for_each = local.srv

  zone_id = var.zone_id
  name    = each.value.name
  type    = "SRV"
  ttl     = var.ttl
  data = {
    priority = each.value.priority
    weight   = each.value.weight
    port     = each.value.port
    target   = each.value.target
  }
}

resource "cloudflare_dns_record" "mta_sts_cname" {
  count = var.mta_sts != null && try(var.mta_sts.policy_host_cname, null) != null ? 1 : 0

  zone_id = var.zone_id
  name    = local.mta_sts_host
  type    = "CNAME"
  ttl     = var.ttl
  content = trimsuffix(var.mta_sts.policy_host_cname, ".")
  # The policy host must present its own certificate for mta-sts.<domain> (RFC 8461
  # section 3.3); proxying would put Cloudflare's certificate and caching in front of it.
  proxied = false
}

resource "cloudflare_dns_record" "mta_sts_a" {
  for_each = var.mta_sts == null ? toset([]) : toset(try(var.mta_sts.policy_host_ipv4, []))

  zone_id = var.zone_id
  name    = local.mta_sts_host
  type    = "A"
  ttl     = var.ttl
  content = each.value
  proxied = false
}

resource "cloudflare_dns_record" "mta_sts_aaaa" {
  for_each = var.mta_sts == null ? toset([]) : toset(try(var.mta_sts.policy_host_ipv6, []))

  zone_id = var.zone_id
  name    = local.mta_sts_host
  type    = "AAAA"
  ttl     = var.ttl
  content = each.value
  proxied = false
}
