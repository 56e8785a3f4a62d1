require ["editheader", "fileinto"];
deleteheader :contains "subject" "report";
if not exists "subject" { fileinto "subject-deleted"; }
