require ["date", "fileinto", "variables"];
if date :originalzone :matches "date" "date" "*" { fileinto "d/${1}"; }
