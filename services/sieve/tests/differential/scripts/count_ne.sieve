require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :count "ne" :comparator "i;ascii-numeric" "x-spam-score" "1" { fileinto "not-one"; }
