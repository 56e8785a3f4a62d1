require ["variables", "fileinto"];
if header :matches "subject" "*[*]*" { fileinto "tag/${2}"; }
elsif header :matches "from" "*<*@*>" { fileinto "dom/${3}"; }
