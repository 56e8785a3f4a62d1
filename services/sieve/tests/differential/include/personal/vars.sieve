require ["include", "variables", "fileinto"];
global "x";
set "local" "L";
fileinto "v-${x}-${local}";
