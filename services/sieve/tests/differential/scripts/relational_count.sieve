require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] "2" { fileinto "many"; }
if header :count "gt" :comparator "i;ascii-numeric" "received" "1" { fileinto "hops"; }
