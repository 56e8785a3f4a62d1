require "imap4flags";
if header :contains "subject" "report" { addflag "\\Flagged"; }
addflag "\\Seen";
keep;
