require ["fileinto", "copy"];
fileinto :copy "Archive";
if header :contains "subject" "spam" { fileinto "Junk"; }
