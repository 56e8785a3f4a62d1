require "fileinto";
if header :contains "subject" "zzz" { fileinto "a"; }
elsif header :contains "subject" "e" { fileinto "b"; }
elsif true { fileinto "c"; }
else { fileinto "d"; }
