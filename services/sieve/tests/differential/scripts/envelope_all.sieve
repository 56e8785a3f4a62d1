require ["envelope", "fileinto"];
if envelope :all :is "to" "alice@example.org" { fileinto "exact-rcpt"; }
if envelope :localpart :matches "from" "*-bounces" { fileinto "bounces"; }
