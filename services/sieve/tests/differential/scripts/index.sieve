require ["index", "fileinto", "variables"];
if header :index 1 :last :matches "received" "from *" { fileinto "last-hop/${1}"; }
