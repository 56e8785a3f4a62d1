require "fileinto";
if address :domain :matches "to" "*.org" { fileinto "to-org"; }
if not exists "cc" { fileinto "no-cc"; }
