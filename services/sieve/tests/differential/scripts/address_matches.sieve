require ["fileinto", "variables"];
if address :matches :domain "from" "*.*" { fileinto "from-${1}"; }
