require ["encoded-character", "fileinto"];
if header :contains "subject" "${hex:48 65 6c 6c 6f}" { fileinto "hex-${unicode:263a}"; }
if header :contains "subject" "f${unicode:fc}r" { fileinto "u-umlaut"; }
if header :contains "subject" "${hex:}" { fileinto "literal"; }
