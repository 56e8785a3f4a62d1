require ["ihave", "fileinto"];
fileinto "before";
if header :contains "subject" "hello" { error "refusing this one"; }
