require "imap4flags";
setflag ["a", "b", "c"];
removeflag "b";
if hasflag :is "c" { addflag "\\Flagged"; }
