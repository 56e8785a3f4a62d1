require ["editheader", "fileinto"];
addheader "X-Filtered" "yes";
if header :is "X-Filtered" "yes" { fileinto "seen-own-header"; }
deleteheader "X-Spam-Score";
if not exists "X-Spam-Score" { fileinto "score-gone"; }
