require ["relational", "fileinto"];
if header :count "gt" "x-label" "10" { fileinto "strcount"; }
