require ["fileinto", "variables"];
set "Box" "Mixed";
fileinto "${BOX}-${box}";
