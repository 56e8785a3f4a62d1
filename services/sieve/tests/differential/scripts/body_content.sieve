require ["body", "fileinto"];
if body :content "text/html" :contains "invoice" { fileinto "html"; }
if body :content "text/plain" :contains "budget" { fileinto "plain"; }
