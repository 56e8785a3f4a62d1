require "vacation";
vacation :addresses ["team@example.org", "dev@lists.example.net"] :subject "Away" "Away.";
