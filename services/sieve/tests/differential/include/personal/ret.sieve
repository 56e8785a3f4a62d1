require ["include", "fileinto"];
if header :contains "subject" "hello" { return; }
fileinto "not-hello";
