require ["fileinto", "mailbox"];
fileinto :create "Auto/Created";
