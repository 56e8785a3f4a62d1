require ["vacation", "fileinto"];
if header :contains "subject" "invoice" { fileinto "Invoices"; }
vacation :mime :handle "h1" :from "alice@example.org" text:
Content-Type: text/plain

Away.
.
;
