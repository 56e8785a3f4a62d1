require ["editheader", "index", "fileinto", "variables"];
deleteheader :index 1 :last "X-Label";
if header :matches "X-Label" "*" { fileinto "label/${1}"; }
