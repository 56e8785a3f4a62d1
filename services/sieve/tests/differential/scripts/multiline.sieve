require "reject";
if header :contains "from" "MAILER-DAEMON" {
  reject text:
Bounces are not accepted here.
..dot line
.
;
}
