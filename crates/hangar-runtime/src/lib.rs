//! Hangar's replica runtime: the code that turns "run this build with these
//! resources" into a running, isolated process, and tears it down again.
//!
//! This crate knows nothing of HTTP, the store or the controller; it is driven by
//! them. It is synchronous where the kernel interface demands it (see
//! [`sandbox`]): youki's `libcontainer` forks with a raw `clone3`, so it must not
//! run on a tokio worker thread of the daemon.
//!
//! # Layout
//!
//! What exists now:
//!
//! * [`sandbox`]: one sandbox = one youki `libcontainer` container. A synchronous
//!   API to create, start, wait for, signal, stop and delete it, with a root
//!   filesystem built from read-only binds of the host's `/usr` and `/etc`, its
//!   own pid/mount/uts/ipc/cgroup namespaces, a network namespace that is
//!   empty, the host's, or its own wired to a bridge with CNI (an address
//!   reachable from the host, egress through masquerade), no
//!   capabilities, `no_new_privs`, an unprivileged uid, CPU, memory and pids
//!   limits (OOM kills reported as such), and stdio connected to descriptors
//!   the caller owns; and exec of a further command in a running sandbox,
//!   with bounded captured output and a timeout.
//!
//! What it will grow into (see `ARCHITECTURE.md`, "The sandbox driver"):
//!
//! * `Driver`: the trait the controller reconciles against: create / start /
//!   stop / delete a replica, exec in it, read its logs and metrics. One fake
//!   that records calls, for controller tests.
//! * `drivers::sandbox`: the embedded default, built on [`sandbox`]; each replica
//!   runs under a `hangar shim` process that owns its stdio pipes and exit status
//!   and survives daemon restarts. Adds the build artifact at `/app` through an overlay.
//! * `drivers::docker` (bollard) and `drivers::kubernetes` (kube-rs: a Deployment
//!   and a Service per instance).

pub mod sandbox;
