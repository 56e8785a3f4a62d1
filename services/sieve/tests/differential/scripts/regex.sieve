require ["regex", "fileinto", "variables"];
if header :regex "subject" "^\\[([a-z]+)\\]" { fileinto "rx/${1}"; }
if address :regex :localpart "from" "^[a-z]+$" { keep; }
