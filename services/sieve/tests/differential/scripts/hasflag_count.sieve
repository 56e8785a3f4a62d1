require ["imap4flags", "relational", "comparator-i;ascii-numeric", "fileinto"];
addflag "x y z";
if hasflag :count "eq" :comparator "i;ascii-numeric" "3" { fileinto "three"; }
