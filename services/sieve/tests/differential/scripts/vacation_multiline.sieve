require "vacation";
vacation :subject "Away" text:
Hello,
..I am away.
.
;
