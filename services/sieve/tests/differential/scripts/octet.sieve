require "fileinto";
if header :comparator "i;octet" :contains "subject" "hello" { fileinto "lower"; }
if header :comparator "i;octet" :contains "subject" "Hello" { fileinto "exact"; }
