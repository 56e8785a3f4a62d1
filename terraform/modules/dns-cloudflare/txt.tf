# Provider-specific TXT formatting, apart from main.tf so the tests can evaluate it with
# `terraform console` (which needs no provider) together with records.tf.

locals {
  # Cloudflare keeps one record per value. Its API wants TXT content as RFC 1035 quoted
  # character-strings of at most 255 bytes each, separated by spaces ("first255" "rest");
  # unquoted content draws a warning and a long unquoted value is re-split by Cloudflare,
  # which then shows as drift on every plan.
  cloudflare_txt = merge([
    for key, record in local.txt_chunks : {
      for index, chunks in record.values : "${key}-${index}" => {
        name    = record.name
        content = join(" ", [for chunk in chunks : "\"${chunk}\""])
      }
    }
  ]...)
}
