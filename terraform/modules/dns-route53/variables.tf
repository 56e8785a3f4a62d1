# Shared verbatim with ../dns-cloudflare/variables.tf (tests/terraform checks they are identical),
# so both providers publish the same records from the same inputs.

variable "zone_id" {
  description = "ID of the DNS zone that holds var.domain: the Route 53 hosted zone ID, or the Cloudflare zone ID."
  type        = string
  validation {
    condition     = length(var.zone_id) > 0
    error_message = "zone_id must not be empty."
  }
}

variable "domain" {
  description = "Mail domain the records are for (for example example.com), without a trailing dot. Must be var.zone_id's apex or a name inside it."
  type        = string
  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.domain)) && length(var.domain) <= 253
    error_message = "domain must be a lower-case DNS name such as example.com (letters, digits, hyphens; labels of 1-63 characters; no trailing dot)."
  }
}

variable "ttl" {
  description = "TTL in seconds of every record created."
  type        = number
  default     = 3600
  validation {
    condition     = var.ttl >= 60 && var.ttl <= 86400 && floor(var.ttl) == var.ttl
    error_message = "ttl must be a whole number of seconds between 60 and 86400."
  }
}

variable "mx" {
  description = "MX records of the domain: the hosts that receive its mail (Mailfleet's SMTP service, usually its load balancer name) and their priorities (lower is preferred, RFC 5321 section 5.1). An empty list publishes no MX."
  type = list(object({
    host     = string
    priority = number
  }))
  validation {
    condition     = alltrue([for m in var.mx : m.priority >= 0 && m.priority <= 65535 && floor(m.priority) == m.priority])
    error_message = "Every MX priority must be a whole number from 0 to 65535."
  }
  validation {
    condition     = alltrue([for m in var.mx : can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]\\.?$", m.host))])
    error_message = "Every MX host must be a lower-case host name such as mx1.example.com (an IP address is not allowed in MX, RFC 7505/5321)."
  }
}

variable "spf" {
  description = "SPF policy (RFC 7208) published as a TXT record at the domain apex: the mechanisms that may send for the domain (for example [\"mx\", \"include:_spf.example.net\"]) and the final \"all\" qualifier. The record is \"v=spf1 <mechanisms> <all>\"."
  type = object({
    mechanisms = list(string)
    all        = optional(string, "-all")
  })
  default = {
    mechanisms = ["mx"]
  }
  validation {
    condition     = contains(["-all", "~all", "?all"], var.spf.all)
    error_message = "spf.all must be one of -all, ~all, ?all (+all would let anyone send as the domain)."
  }
  validation {
    condition     = alltrue([for m in var.spf.mechanisms : can(regex("^[+?~-]?(a|mx|ptr|ip4|ip6|include|exists|redirect|exp)([:=/][!-~]+)?$", m))])
    error_message = "Every spf.mechanisms entry must be one SPF term without spaces or quotes, such as mx, a, ip4:192.0.2.0/24 or include:_spf.example.net (without the leading v=spf1 and without all)."
  }
}

variable "extra_apex_txt" {
  description = "Other TXT values to publish at the domain apex beside SPF (for example a site verification token). Route 53 holds one TXT record set per name, so values that another tool writes at the apex would be overwritten: list them here instead."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for v in var.extra_apex_txt : can(regex("^[ -!#-\\[\\]-~]+$", v)) && !startswith(v, "v=spf1")])
    error_message = "extra_apex_txt values must be printable ASCII without double quotes or backslashes, and must not be a second SPF record (RFC 7208 section 3.2 allows only one)."
  }
}

variable "dkim_keys" {
  description = "DKIM public keys (RFC 6376 section 3.6.1) published at <selector>._domainkey.<domain>. Use the selectors and base64 public keys that `mailfleet dkim generate` wrote (mailfleet-rsa and mailfleet-ed25519 by default). The value \"v=DKIM1; k=<algorithm>; p=<public_key>\" is split into strings of at most 255 bytes."
  type = list(object({
    selector   = string
    public_key = string
    algorithm  = optional(string, "rsa")
  }))
  default = []
  validation {
    condition     = alltrue([for k in var.dkim_keys : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", k.selector))])
    error_message = "Every DKIM selector must be lower-case DNS labels (letters, digits, inner hyphens), for example mailfleet-rsa."
  }
  validation {
    condition     = alltrue([for k in var.dkim_keys : can(regex("^[A-Za-z0-9+/]+={0,2}$", k.public_key))])
    error_message = "Every DKIM public_key must be the bare base64 key (the p= value) without spaces, quotes or PEM header lines."
  }
  validation {
    condition     = alltrue([for k in var.dkim_keys : contains(["rsa", "ed25519"], k.algorithm)])
    error_message = "DKIM algorithm must be rsa or ed25519 (RFC 8463)."
  }
  validation {
    condition     = length(distinct([for k in var.dkim_keys : k.selector])) == length(var.dkim_keys)
    error_message = "DKIM selectors must be unique."
  }
}

variable "dmarc" {
  description = "DMARC policy (RFC 7489) published at _dmarc.<domain>: p (none, quarantine, reject), optional sp for subdomains, rua/ruf report URIs (mailto: addresses), pct (percentage of failing mail the policy applies to; omitted from the record when 100, its default), adkim/aspf alignment (r relaxed, s strict) and fo failure-report options. Set to null to publish no DMARC record."
  type = object({
    policy           = string
    subdomain_policy = optional(string)
    rua              = optional(list(string), [])
    ruf              = optional(list(string), [])
    pct              = optional(number, 100)
    adkim            = optional(string, "r")
    aspf             = optional(string, "r")
    fo               = optional(string)
  })
  default = {
    policy = "none"
  }
  validation {
    condition     = var.dmarc == null || contains(["none", "quarantine", "reject"], try(var.dmarc.policy, ""))
    error_message = "dmarc.policy must be none, quarantine or reject."
  }
  validation {
    condition     = var.dmarc == null || try(var.dmarc.subdomain_policy, null) == null || contains(["none", "quarantine", "reject"], coalesce(try(var.dmarc.subdomain_policy, null), "none"))
    error_message = "dmarc.subdomain_policy must be none, quarantine or reject when set."
  }
  validation {
    condition     = var.dmarc == null || (try(var.dmarc.pct, 100) >= 0 && try(var.dmarc.pct, 100) <= 100 && floor(try(var.dmarc.pct, 100)) == try(var.dmarc.pct, 100))
    error_message = "dmarc.pct must be a whole number from 0 to 100."
  }
  validation {
    condition     = var.dmarc == null || (contains(["r", "s"], try(var.dmarc.adkim, "r")) && contains(["r", "s"], try(var.dmarc.aspf, "r")))
    error_message = "dmarc.adkim and dmarc.aspf must be r (relaxed) or s (strict)."
  }
  validation {
    condition     = var.dmarc == null || alltrue([for u in concat(try(var.dmarc.rua, []), try(var.dmarc.ruf, [])) : can(regex("^mailto:[^,;!\\s\"\\\\]+@[^,;!\\s\"\\\\]+$", u))])
    error_message = "dmarc.rua and dmarc.ruf entries must be mailto: URIs such as mailto:dmarc@example.com (no commas, semicolons, ! size suffixes or spaces)."
  }
  validation {
    condition     = var.dmarc == null || try(var.dmarc.fo, null) == null || can(regex("^[01ds](:[01ds])*$", coalesce(try(var.dmarc.fo, null), "0")))
    error_message = "dmarc.fo must be a colon-separated list of 0, 1, d, s (RFC 7489 section 6.3)."
  }
}

variable "mta_sts" {
  description = "MTA-STS (RFC 8461): id is the policy id published in the _mta-sts TXT record (change it whenever the policy file changes); the mta-sts.<domain> host that serves https://mta-sts.<domain>/.well-known/mta-sts.txt is either a CNAME (policy_host_cname) or A/AAAA records (policy_host_ipv4/ipv6). Set to null to publish no MTA-STS records."
  type = object({
    id                = string
    policy_host_cname = optional(string)
    policy_host_ipv4  = optional(list(string), [])
    policy_host_ipv6  = optional(list(string), [])
  })
  default = null
  validation {
    condition     = var.mta_sts == null || can(regex("^[A-Za-z0-9]{1,32}$", try(var.mta_sts.id, "")))
    error_message = "mta_sts.id must be 1 to 32 letters or digits (RFC 8461 section 3.1), for example 20261203T000000."
  }
  validation {
    condition     = var.mta_sts == null || ((try(var.mta_sts.policy_host_cname, null) != null) != (length(concat(try(var.mta_sts.policy_host_ipv4, []), try(var.mta_sts.policy_host_ipv6, []))) > 0))
    error_message = "Set exactly one of mta_sts.policy_host_cname or mta_sts.policy_host_ipv4/ipv6 (a CNAME cannot share its name with other records)."
  }
  validation {
    condition     = var.mta_sts == null || alltrue([for ip in try(var.mta_sts.policy_host_ipv4, []) : can(cidrhost("${ip}/32", 0))])
    error_message = "mta_sts.policy_host_ipv4 entries must be IPv4 addresses."
  }
  validation {
    condition     = var.mta_sts == null || alltrue([for ip in try(var.mta_sts.policy_host_ipv6, []) : can(cidrhost("${ip}/128", 0))])
    error_message = "mta_sts.policy_host_ipv6 entries must be IPv6 addresses."
  }
}

variable "tls_rpt_rua" {
  description = "Where sending servers report TLS failures (SMTP TLS Reporting, RFC 8460): mailto: or https: URIs published at _smtp._tls.<domain>. An empty list publishes no TLS-RPT record."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for u in var.tls_rpt_rua : can(regex("^(mailto:[^,;!\\s\"\\\\]+@[^,;!\\s\"\\\\]+|https://[^,;!\\s\"\\\\]+)$", u))])
    error_message = "tls_rpt_rua entries must be mailto: or https:// URIs without commas, semicolons, spaces or quotes."
  }
}

variable "autoconfig" {
  description = "Mail client autoconfiguration SRV records (RFC 6186, RFC 8314 section 5.1): host is the name clients connect to (Mailfleet's submission/IMAP/POP3 service). A port set to 0 publishes the service with target \".\", which tells clients it is not offered (RFC 2782). Defaults: implicit TLS on 465/993/995, STARTTLS submission on 587 and IMAP on 143, POP3 on 110 not offered. Set to null to publish no SRV records."
  type = object({
    host             = string
    submissions_port = optional(number, 465)
    submission_port  = optional(number, 587)
    imaps_port       = optional(number, 993)
    imap_port        = optional(number, 143)
    pop3s_port       = optional(number, 995)
    pop3_port        = optional(number, 0)
  })
  default = null
  validation {
    condition     = var.autoconfig == null || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]\\.?$", try(var.autoconfig.host, "")))
    error_message = "autoconfig.host must be a lower-case host name such as mail.example.com."
  }
  validation {
    condition = var.autoconfig == null || alltrue([
      for p in [
        try(var.autoconfig.submissions_port, 0), try(var.autoconfig.submission_port, 0),
        try(var.autoconfig.imaps_port, 0), try(var.autoconfig.imap_port, 0),
        try(var.autoconfig.pop3s_port, 0), try(var.autoconfig.pop3_port, 0),
      ] : p >= 0 && p <= 65535 && floor(p) == p
    ])
    error_message = "autoconfig ports must be whole numbers from 1 to 65535, or 0 for \"not offered\"."
  }
}
