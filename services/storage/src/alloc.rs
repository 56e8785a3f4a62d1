//! UID/MODSEQ range allocation (being written).
