require ["envelope", "fileinto"];
if envelope :is "to" "alice@example.org" { fileinto "plain-rcpt"; }
if envelope :is "to" "alice+shop@example.org" { fileinto "plus-rcpt"; }
