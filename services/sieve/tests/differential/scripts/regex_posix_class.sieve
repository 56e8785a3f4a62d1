require ["regex", "fileinto", "variables"];
if header :regex "x-spam-score" "^[[:digit:]]+$" { fileinto "digits"; }
if header :regex "subject" "^([^ ]+) ([^ ]+)" { fileinto "${2}"; }
