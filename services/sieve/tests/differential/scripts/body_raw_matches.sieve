require ["body", "fileinto"];
if body :raw :matches "*invoice*" { fileinto "inv"; }
if body :raw :is "" { fileinto "empty-body"; }
