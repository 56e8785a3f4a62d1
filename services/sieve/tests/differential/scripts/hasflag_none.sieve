require ["imap4flags", "fileinto"];
if hasflag :contains "seen" { fileinto "seen"; }
if not hasflag "x" { fileinto "unflagged"; }
