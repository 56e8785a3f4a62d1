require "fileinto";
if header :is "subject" "Hello World" { fileinto "exact"; }
if header :is "subject" "hello world " { fileinto "trailing-space"; }
