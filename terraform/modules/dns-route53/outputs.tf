output "txt_records" {
  description = "Every TXT record created, by name: the list of values, each as the list of at most 255-byte character-strings that Route 53 serves."
  value       = { for key, record in local.txt_chunks : record.name => record.values }
}

output "dkim_record_names" {
  description = "DKIM record names by selector (<selector>._domainkey.<domain>)."
  value       = { for selector, _ in local.dkim : selector => "${selector}._domainkey.${local.domain}" }
}

output "mx_records" {
  description = "MX record values as published (\"<priority> <host>.\")."
  value       = try(aws_route53_record.mx[0].records, [])
}

output "srv_records" {
  description = "Autoconfiguration SRV records by service name (\"<priority> <weight> <port> <target>\"); target \".\" means not offered."
  value       = { for service, record in aws_route53_record.srv : service => one(record.records) }
}

output "record_fqdns" {
  description = "Fully qualified names of all records this module manages."
  value = distinct(concat(
    [for record in aws_route53_record.txt : record.fqdn],
    [for record in aws_route53_record.mx : record.fqdn],
    [for record in aws_route53_record.srv : record.fqdn],
    [for record in aws_route53_record.mta_sts_cname : record.fqdn],
    [for record in aws_route53_record.mta_sts_a : record.fqdn],
    [for record in aws_route53_record.mta_sts_aaaa : record.fqdn],
  ))
}
