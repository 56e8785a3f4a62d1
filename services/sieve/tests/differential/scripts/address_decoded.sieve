require ["fileinto", "variables"];
if address :all :matches "from" "*" { fileinto "a/${1}"; }
