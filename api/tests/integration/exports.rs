//! GDPR export bundles (tests arrive with the export work).
