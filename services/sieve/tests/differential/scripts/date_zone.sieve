require ["date", "fileinto", "variables", "relational"];
if date :zone "+0000" :value "lt" "date" "hour" "12" { fileinto "morning-utc"; }
if date :zone "+0900" :matches "date" "weekday" "*" { fileinto "wd/${1}"; }
