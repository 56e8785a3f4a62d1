require ["ihave", "fileinto"];
if ihave "variables" {
  if header :matches "subject" "* *" { fileinto "ihave/${1}"; }
} elsif ihave "x-nonexistent" {
  frobnicate :all "of" "it";
}
if ihave ["x-nonexistent", "fileinto"] { this_is :not ["checked"]; }
else { fileinto "fallback"; }
if ihave ["imap4flags", "relational"] {
  if header :count "ge" "received" "1" { addflag "\\Seen"; fileinto "flagged"; }
}
