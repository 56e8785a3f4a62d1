if header :contains "from" "bob" { redirect "bob-archive@example.org"; }
