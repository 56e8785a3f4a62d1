require ["imap4flags", "variables"];
addflag "myflags" "x";
addflag "myflags" "y";
removeflag "myflags" "x";
keep :flags "${myflags}";
