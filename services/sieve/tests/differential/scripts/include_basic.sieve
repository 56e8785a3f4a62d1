require "include";
include :global "g";
include :once "spam";
keep;
