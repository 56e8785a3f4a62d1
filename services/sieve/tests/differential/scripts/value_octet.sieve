require ["relational", "fileinto"];
if header :value "lt" :comparator "i;octet" "subject" "M" { fileinto "a-to-l"; }
if header :value "ge" :comparator "i;octet" "subject" "M" { fileinto "m-to-z"; }
