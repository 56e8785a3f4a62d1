require ["fileinto", "imap4flags", "relational", "comparator-i;ascii-numeric"];
if anyof (header :contains "X-Spam-Flag" "yes", header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "4") {
  addflag "$Junk";
  fileinto "Junk";
} else {
  keep;
}
