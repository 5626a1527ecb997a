//! Hangar's replica runtime: the code that turns "run this build with these
//! resources" into running, isolated processes, and tears them down again.
//!
//! This crate knows nothing of HTTP, the store or the controller; it is driven
//! by them through the [`Driver`] trait.
//!
//! * [`driver`]: the trait and its types — create, stop, remove, list (for
//!   re-adoption), exec, stdin, follow output, stats.
//! * [`sandbox`]: one sandbox = one youki `libcontainer` container, through a
//!   synchronous API (root filesystem of read-only host binds plus the
//!   artifact at `/app`, namespaces, CNI bridge network, limits, exec, stats).
//!   Single-threaded callers only: libcontainer forks with a raw `clone3`.
//! * [`shim`]: `hangar shim`, the process that owns one sandbox, its stdio and
//!   its exit status, and outlives the daemon.
//! * [`SandboxDriver`]: the embedded default [`Driver`], one shim per replica.
//! * [`DockerDriver`]: replicas as containers on a Docker engine (bollard).
//! * [`KubernetesDriver`]: replicas as pods on Kubernetes clusters (kube-rs),
//!   one cluster per kubernetes cloud.
//! * [`network`]: what a replica may reach, the policy every driver enforces.
//! * `fake` (only with the `testing` feature): a [`Driver`] that runs
//!   nothing and records calls, for tests of the layers above.

pub mod docker;
pub mod driver;
mod driver_set;
pub mod kubernetes;
// Test fixtures stay out of release builds; the crate's own unit tests use
// the fake too.
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod network;
mod nft;
pub mod sandbox;
mod sandbox_driver;
pub mod shim;

pub use docker::{BuildLimits, DockerDriver, DockerDriverConfig};
pub use driver::Driver;
pub use driver_set::DriverSet;
pub use kubernetes::{Cluster, ClusterConfig, KubernetesDriver};
pub use sandbox_driver::{SandboxDriver, SandboxDriverConfig};
