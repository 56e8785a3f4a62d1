require "include";
include "nope";
discard;
