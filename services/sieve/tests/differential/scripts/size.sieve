require "fileinto";
if size :over 700 { fileinto "big"; }
if size :under 700 { fileinto "small"; }
