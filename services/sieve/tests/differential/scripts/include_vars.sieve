require ["include", "variables", "fileinto"];
global "x";
set "x" "V";
include "vars";
fileinto "after-${local}";
