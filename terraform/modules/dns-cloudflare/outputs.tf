output "txt_records" {
  description = "Every TXT record created, by name: the list of values, each as the list of at most 255-byte character-strings Cloudflare serves."
  value       = { for key, record in local.txt_chunks : record.name => record.values }
}

output "dkim_record_names" {
  description = "DKIM record names by selector (<selector>._domainkey.<domain>)."
  value       = { for selector, _ in local.dkim : selector => "${selector}._domainkey.${local.domain}" }
}

output "txt_contents" {
  description = "TXT record contents exactly as sent to the Cloudflare API (quoted character-strings separated by spaces), by record key."
  value       = { for key, record in local.cloudflare_txt : key => record.content }
}

output "srv_records" {
  description = "Autoconfiguration SRV records by service name (\"<priority> <weight> <port> <target>\"); target \".\" means not offered."
  value       = { for service, record in local.srv : service => "${record.priority} ${record.weight} ${record.port} ${record.target}" }
}

output "record_ids" {
  description = "Cloudflare record IDs of all records this module manages."
  value = concat(
    [for record in cloudflare_dns_record.txt : record.id],
    [for record in cloudflare_dns_record.mx : record.id],
    [for record in cloudflare_dns_record.srv : record.id],
    [for record in cloudflare_dns_record.mta_sts_cname : record.id],
    [for record in cloudflare_dns_record.mta_sts_a : record.id],
    [for record in cloudflare_dns_record.mta_sts_aaaa : record.id],
  )
}
