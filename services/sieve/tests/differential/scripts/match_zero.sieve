require ["fileinto", "variables"];
if header :matches "subject" "* *" { fileinto "${0}|${1}|${2}|${3}|"; }
