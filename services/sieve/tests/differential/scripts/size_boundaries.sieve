require "fileinto";
if size :over 0 { fileinto "nonzero"; }
if size :under 1K { fileinto "under-1k"; }
if size :over 1M { fileinto "huge"; }
