require ["relational", "comparator-i;ascii-numeric", "fileinto"];
if header :value "eq" :comparator "i;ascii-numeric" "subject" "abc" { fileinto "inf-eq"; }
if header :value "gt" :comparator "i;ascii-numeric" "subject" "99999999999999999999" { fileinto "inf-gt"; }
