require ["body", "fileinto"];
if body :raw :contains "Gr=C3=BC" { fileinto "qp-raw"; }
if body :raw :contains "<b>" { fileinto "html-raw"; }
