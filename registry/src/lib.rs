//! wharf-registry: the registry server behind `wharf serve` (OCI Distribution Spec v1.1).
//!
//! The server itself arrives with issue 3; this crate holds its place in the workspace so the
//! dependency direction `wharf → {builder, registry} → common` is fixed from the start.
