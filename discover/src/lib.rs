//! seam's discovery: which processes to instrument (selectors) and who they are (identity).

pub mod config;
pub mod identity;
pub mod procfs;
pub mod selector;
pub mod sockdiag;
pub mod tlsfiles;
