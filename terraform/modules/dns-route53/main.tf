resource "aws_route53_record" "txt" {
  for_each = local.route53_txt

  zone_id         = var.zone_id
  name            = each.value.name
  type            = "TXT"
  ttl             = var.ttl
  records         = each.value.records
  allow_overwrite = false
}

resource "aws_route53_record" "mx" {
  count = length(local.mx) > 0 ? 1 : 0

  zone_id = var.zone_id
  name    = local.domain
  type    = "MX"
  ttl     = var.ttl
  records = [for m in local.mx : "${m.priority} ${m.host}."]
}

resource "aws_route53_record" "srv" {
  for_each = local.srv

  zone_id = var.zone_id
  name    = each.value.name
  type    = "SRV"
  ttl     = var.ttl
  # "priority weight port target"; the target "." stays "." (no second dot).
  records = ["${each.value.priority} ${each.value.weight} ${each.value.port} ${each.value.target == "." ? "." : "${each.value.target}."}"]
}

resource "aws_route53_record" "mta_sts_cname" {
  count = var.mta_sts != null && try(var.mta_sts.policy_host_cname, null) != null ? 1 : 0

  zone_id = var.zone_id
  name    = local.mta_sts_host
  type    = "CNAME"
  ttl     = var.ttl
  records = [trimsuffix(var.mta_sts.policy_host_cname, ".")]
}

resource "aws_route53_record" "mta_sts_a" {
  count = var.mta_sts != null && length(try(var.mta_sts.policy_host_ipv4, [])) > 0 ? 1 : 0

  zone_id = var.zone_id
  name    = local.mta_sts_host
  type    = "A"
  ttl     = var.ttl
  records = var.mta_sts.policy_host_ipv4
}

resource "aws_route53_record" "mta_sts_aaaa" {
  count = var.mta_sts != null && length(try(var.mta_sts.policy_host_ipv6, [])) > 0 ? 1 : 0

  zone_id = var.zone_id
  name    = local.mta_sts_host
  type    = "AAAA"
  ttl     = var.ttl
  records = var.mta_sts.policy_host_ipv6
}
