require ["include", "fileinto"];
include :optional "nope";
fileinto "ok";
