require ["envelope", "subaddress", "fileinto", "variables"];
if envelope :detail :matches "to" "*" { fileinto "plus/${1}"; }
elsif envelope :user :is "to" "alice" { fileinto "plain-alice"; }
