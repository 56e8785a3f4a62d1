require ["body", "fileinto"];
if body :text :contains "attached" { fileinto "attached"; }
if body :text :contains "Grüße" { fileinto "umlaut"; }
