# Provider-neutral record set, shared verbatim with ../dns-cloudflare/records.tf (tests/terraform
# checks they are identical): main.tf only turns these values into the provider's resources.

locals {
  domain = trimsuffix(var.domain, ".")

  spf = join(" ", concat(["v=spf1"], var.spf.mechanisms, [var.spf.all]))

  dkim = { for k in var.dkim_keys : k.selector => "v=DKIM1; k=${k.algorithm}; p=${k.public_key}" }

  # Tags in the order RFC 7489 section 6.4 lists them; v= must come first and p= second.
  dmarc = var.dmarc == null ? null : join("; ", compact([
    "v=DMARC1",
    "p=${var.dmarc.policy}",
    var.dmarc.subdomain_policy == null ? "" : "sp=${var.dmarc.subdomain_policy}",
    var.dmarc.pct == 100 ? "" : "pct=${var.dmarc.pct}",
    length(var.dmarc.rua) == 0 ? "" : "rua=${join(",", var.dmarc.rua)}",
    length(var.dmarc.ruf) == 0 ? "" : "ruf=${join(",", var.dmarc.ruf)}",
    "adkim=${var.dmarc.adkim}",
    "aspf=${var.dmarc.aspf}",
    var.dmarc.fo == null ? "" : "fo=${var.dmarc.fo}",
  ]))

  # One entry per DNS name; each name holds a list of TXT values.
  txt_records = merge(
    { apex = { name = local.domain, values = concat([local.spf], var.extra_apex_txt) } },
    { for selector, value in local.dkim : "dkim-${selector}" => { name = "${selector}._domainkey.${local.domain}", values = [value] } },
    local.dmarc == null ? {} : { dmarc = { name = "_dmarc.${local.domain}", values = [local.dmarc] } },
    var.mta_sts == null ? {} : { mta_sts = { name = "_mta-sts.${local.domain}", values = ["v=STSv1; id=${var.mta_sts.id}"] } },
    length(var.tls_rpt_rua) == 0 ? {} : { tls_rpt = { name = "_smtp._tls.${local.domain}", values = ["v=TLSRPTv1; rua=${join(",", var.tls_rpt_rua)}"] } },
  )

  # A TXT value is a sequence of character-strings of at most 255 bytes each (RFC 1035
  # section 3.3.14); receivers concatenate them without separators (RFC 6376 section 3.6.2.2,
  # RFC 7208 section 3.3). Every value here is printable ASCII (the variables' validations
  # refuse anything else), so 255 characters are 255 bytes and "." matches every character.
  txt_chunks = {
    for key, record in local.txt_records : key => {
      name   = record.name
      values = [for value in record.values : regexall(".{1,255}", value)]
    }
  }

  mx = [for m in var.mx : { priority = m.priority, host = trimsuffix(m.host, ".") }]

  # RFC 6186 section 3 services; port 0 means "not offered": target ".", RFC 2782.
  srv_ports = var.autoconfig == null ? {} : {
    "_submissions._tcp" = var.autoconfig.submissions_port
    "_submission._tcp"  = var.autoconfig.submission_port
    "_imaps._tcp"       = var.autoconfig.imaps_port
    "_imap._tcp"        = var.autoconfig.imap_port
    "_pop3s._tcp"       = var.autoconfig.pop3s_port
    "_pop3._tcp"        = var.autoconfig.pop3_port
  }
  srv = {
    for service, port in local.srv_ports : service => {
      name     = "${service}.${local.domain}"
      priority = 0
      weight   = port == 0 ? 0 : 1
      port     = port == 0 ? 0 : port
      target   = port == 0 ? "." : trimsuffix(var.autoconfig.host, ".")
    }
  }

  mta_sts_host = "mta-sts.${local.domain}"
}
