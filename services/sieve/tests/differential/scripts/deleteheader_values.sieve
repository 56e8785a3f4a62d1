require ["editheader", "fileinto"];
deleteheader :is "X-Label" ["work", "urgent"];
if not exists "X-Label" { fileinto "labels-gone"; }
