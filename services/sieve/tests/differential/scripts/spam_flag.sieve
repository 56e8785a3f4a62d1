require "fileinto";
if header :is "X-Spam-Flag" "yes" { fileinto "INBOX.Junk"; }
elsif header :matches "subject" "[SPAM]*" { fileinto "Junk"; }
else { keep; }
