require ["fileinto", "variables"];
if header :matches "List-Id" "*<*.lists.example.net>" {
  fileinto "lists/${2}";
}
