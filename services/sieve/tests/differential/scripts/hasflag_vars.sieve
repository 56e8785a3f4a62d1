require ["imap4flags", "variables", "fileinto"];
set "f" "alpha beta";
if hasflag :contains "f" "ph" { fileinto "has-ph"; }
