if exists "list-id" { stop; }
