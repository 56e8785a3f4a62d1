require ["environment", "fileinto", "variables"];
if environment :matches "location" "*" { set "l" "${1}"; }
if environment :matches "phase" "*" { fileinto "${l}-${1}"; }
if environment :matches "no-such-item" "*" { fileinto "unknown-item"; }
