require "variables";
set "a" "archive";
redirect "${a}@example.org";
