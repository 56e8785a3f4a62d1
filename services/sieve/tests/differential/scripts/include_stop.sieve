require ["include", "fileinto"];
include "stopper";
fileinto "not-stopped";
