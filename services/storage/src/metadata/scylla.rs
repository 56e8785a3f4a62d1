//! ScyllaDB MetadataStore (being written).
