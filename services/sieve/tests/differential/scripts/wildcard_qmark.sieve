require "fileinto";
if header :matches "subject" "?e*" { fileinto "qmark"; }
