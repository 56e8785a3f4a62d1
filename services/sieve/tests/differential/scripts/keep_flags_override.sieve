require "imap4flags";
setflag "a";
keep :flags "b";
