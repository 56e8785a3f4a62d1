require ["fileinto", "variables"];
if address :localpart :matches ["to", "cc"] "*e*" { fileinto "lp-${1}-${2}"; }
