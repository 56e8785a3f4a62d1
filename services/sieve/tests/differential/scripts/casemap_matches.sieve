require "fileinto";
if header :matches "subject" "*WORLD" { fileinto "world"; }
if header :matches "subject" "*e*o*" { fileinto "e-o"; }
