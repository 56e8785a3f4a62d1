require "ereject";
ereject "nope";
