require ["include", "imap4flags"];
addflag "\\Flagged";
