require "fileinto";
if not anyof (exists "list-id", header :contains "subject" "spam") { fileinto "personal"; }
