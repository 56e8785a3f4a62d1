require ["fileinto", "variables"];
if header :matches "subject" "**o*" { fileinto "[${1}][${2}][${3}]"; }
