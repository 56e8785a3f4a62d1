require "fileinto";
if true { if exists "subject" { fileinto "a"; stop; } }
fileinto "b";
