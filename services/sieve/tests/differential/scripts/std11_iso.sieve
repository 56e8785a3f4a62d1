require ["date", "fileinto", "variables"];
if date :zone "+0100" :matches "date" "iso8601" "*" { set "i" "${1}"; }
if date :zone "+0100" :matches "date" "std11" "*" { fileinto "${i} / ${1}"; }
