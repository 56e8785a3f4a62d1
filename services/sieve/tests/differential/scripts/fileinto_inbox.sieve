require ["fileinto", "imap4flags"];
fileinto "INBOX";
keep :flags "\\Seen";
