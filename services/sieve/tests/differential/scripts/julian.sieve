require ["date", "relational", "fileinto"];
if date :originalzone :value "gt" "date" "julian" "60766" { fileinto "after-apr1"; }
