require ["variables", "fileinto"];
set "box" "Folder";
set :upper "u" "${box}";
set :lowerfirst "l" "${u}";
set :length "n" "${box}";
fileinto "${l}-${n}";
