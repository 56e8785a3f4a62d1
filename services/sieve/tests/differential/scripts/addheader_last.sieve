require ["editheader", "index", "fileinto"];
addheader :last "X-Mark" "bottom";
addheader "X-Mark" "top";
if header :index 1 :is "X-Mark" "top" { if header :index 1 :last :is "X-Mark" "bottom" { fileinto "ordered"; } }
