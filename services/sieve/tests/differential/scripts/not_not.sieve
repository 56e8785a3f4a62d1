require "fileinto";
if not not exists "from" { fileinto "double-negation"; }
