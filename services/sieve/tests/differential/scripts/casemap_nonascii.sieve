require "fileinto";
if header :matches "subject" "*FÜR*" { fileinto "matches-fold"; }
if header :contains "subject" "FÜR" { fileinto "contains-fold"; }
if header :contains "subject" "INVOICE" { fileinto "ascii-fold"; }
