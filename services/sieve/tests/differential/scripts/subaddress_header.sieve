require ["subaddress", "fileinto"];
if address :detail :is "to" "shop" { fileinto "shopping"; }
if address :user :is "to" "alice" { fileinto "alice"; }
