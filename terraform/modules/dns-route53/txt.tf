# Provider-specific TXT formatting, apart from main.tf so the tests can evaluate it with
# `terraform console` (which needs no provider) together with records.tf.

locals {
  # Route 53 wants each character-string of a TXT value in double quotes. The provider adds
  # the outer pair itself, so the strings are joined with \"\": "first255""rest" is served as
  # the two strings first255 and rest, as the provider's documentation says for DKIM keys.
  route53_txt = {
    for key, record in local.txt_chunks : key => {
      name    = record.name
      records = [for chunks in record.values : join("\"\"", chunks)]
    }
  }
}
