require "fileinto";
if address :domain :is "from" "EXAMPLE.COM" { fileinto "ci"; }
if address :domain :comparator "i;octet" :is "from" "EXAMPLE.COM" { fileinto "cs"; }
