require ["include", "imap4flags"];
include :global "flags";
