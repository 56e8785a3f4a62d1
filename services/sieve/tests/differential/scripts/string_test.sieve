require ["variables", "fileinto"];
if header :matches "subject" "*" { set "s" "${1}"; }
if string :contains "${s}" "Re:" { fileinto "replies"; }
if string :is "${nothere}" "" { keep; }
