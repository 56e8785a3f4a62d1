require "fileinto";
if header :contains "subject" "" { fileinto "empty"; }
if header :is "x-nothere" "" { fileinto "absent"; }
