//! # kiln-image
//!
//! Images are the root filesystems jobs run on. An image is a manifest
//! ([`ImageManifest`]) in kiln's content-addressed store, naming its layers
//! (tar streams, also in the store), where it came from and every package it
//! holds; the digest of the manifest blob is the image's identity, and that
//! digest is what provenance and `kiln reproduce` name.
//!
//! * [`build_debian`] makes an image from Debian packages with `mmdebstrap`
//!   (apt checks the archive's signatures with the host's Debian keyring),
//!   reproducibly: `SOURCE_DATE_EPOCH` fixes file times, apt's lists and
//!   caches and the documentation are left out, and the installed packages
//!   and versions are recorded in the manifest. A recipe already built in the
//!   store is not built again (the recipe's digest is in the manifest).
//! * [`materialize`] turns an image into a directory on the host that jobs
//!   mount read-only as the lower layer of their writable root. Every layer
//!   is read back from the store verified, then extracted by
//!   [`extract::extract_layer`] through kiln-store's strict tar reader:
//!   every path is resolved beneath the root without following a link
//!   (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`), files are created
//!   with `O_EXCL | O_NOFOLLOW`, OCI whiteouts are applied, and entry/byte
//!   limits hold. The result appears under its digest only when complete.

mod debian;
mod error;
pub mod extract;
mod images;
mod manifest;
pub mod oci;
pub mod registry;

pub use debian::{build_debian, BuildOptions, BuildReport};
pub use error::{ImageError, Result};
pub use extract::ExtractLimits;
pub use images::{list, materialize, remove, resolve, Image};
pub use manifest::{
    parse_package_list, ImageManifest, Layer, Package, Recipe, Source, DEFAULT_EPOCH, DEFAULT_IMAGE,
    DEFAULT_MIRROR, DEFAULT_SUITE, RUNNER_PACKAGES, SCHEMA, SUITES,
};
pub use oci::{import_oci, RunConfig};
pub use registry::{pull, Credentials, PullOptions, Reference};
