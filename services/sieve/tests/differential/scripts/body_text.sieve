require ["body", "fileinto"];
if body :text :contains "invoice" { fileinto "Invoices"; }
if body :contains "lunch" { fileinto "Lunch"; }
