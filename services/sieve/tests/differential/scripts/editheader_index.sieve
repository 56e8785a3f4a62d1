require ["editheader", "index", "fileinto", "relational", "comparator-i;ascii-numeric"];
deleteheader :index 1 "X-Label";
if header :count "eq" :comparator "i;ascii-numeric" "X-Label" "1" { fileinto "one-label"; }
deleteheader "Received";
if exists "Received" { fileinto "received-kept"; }
