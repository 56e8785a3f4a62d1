require "fileinto";
if exists ["List-Id", "List-Unsubscribe"] { fileinto "Lists"; }
if not exists "Date" { discard; }
