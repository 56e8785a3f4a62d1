require ["envelope", "fileinto"];
if envelope :is "from" "bob@example.com" { fileinto "bob"; }
if envelope :domain :is "to" "example.org" { keep; }
