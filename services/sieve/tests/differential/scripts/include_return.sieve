require ["include", "fileinto"];
include "ret";
fileinto "after";
