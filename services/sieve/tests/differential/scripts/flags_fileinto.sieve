require ["imap4flags", "fileinto"];
setflag "$Label1";
if address :domain :is "from" "example.com" { fileinto :flags ["\\Seen", "\\Answered"] "Known"; }
fileinto "Other";
