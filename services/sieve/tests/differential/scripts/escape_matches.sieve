require "fileinto";
if header :matches "X-Spam-Level" "*\\**" { fileinto "stars"; }
if header :matches "subject" "\\[*" { fileinto "bracket"; }
