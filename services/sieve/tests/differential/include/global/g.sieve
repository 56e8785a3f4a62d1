require ["fileinto", "include"];
fileinto "from-global";
include :personal "spam";
