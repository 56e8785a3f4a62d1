require "fileinto";
if anyof (header :contains "subject" "report", allof (exists "List-Id", not header :is "precedence" "bulk")) { fileinto "work"; }
