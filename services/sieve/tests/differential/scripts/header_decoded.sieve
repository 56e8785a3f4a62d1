require ["fileinto", "variables"];
if header :matches "from" "*" { fileinto "h/${1}"; }
