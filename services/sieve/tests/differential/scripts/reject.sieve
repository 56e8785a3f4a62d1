require "reject";
if header :contains "subject" "cheap" { reject "We do not want this."; }
