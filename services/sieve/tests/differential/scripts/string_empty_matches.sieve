require ["variables", "fileinto"];
if string :matches "" "*" { fileinto "empty-star"; }
if string :matches "" "?" { fileinto "empty-q"; }
