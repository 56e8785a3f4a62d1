require "fileinto";
fileinto "x${hex:41}";
