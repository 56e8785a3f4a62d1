require "copy";
redirect :copy "backup@example.org";
