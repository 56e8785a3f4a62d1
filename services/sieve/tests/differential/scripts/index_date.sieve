require ["date", "index", "fileinto", "variables"];
if date :index 1 :zone "+0000" :matches "received" "time" "*" { fileinto "t/${1}"; }
