require ["reject", "fileinto"];
fileinto "Saved";
if header :contains "subject" "cheap" { reject "no"; }
