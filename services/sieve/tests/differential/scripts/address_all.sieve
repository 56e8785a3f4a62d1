require "fileinto";
if address :all :is ["to", "cc"] "alice@example.org" { fileinto "to-me"; }
