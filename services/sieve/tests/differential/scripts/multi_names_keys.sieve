require "fileinto";
if header :contains ["subject", "from"] ["xyz", "bob"] { fileinto "bob-or-xyz"; }
