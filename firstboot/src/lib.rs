//! kiln-firstboot: on a new node's first boot, read the node's identity, verify the baked bundle,
//! activate it atomically, start containerd and kubelet and check their health.
//!
//! Every path is relative to a root passed in; only `main` uses `/`.

pub mod activate;
pub mod adopt;
pub mod config;
pub mod datasource;
pub mod net;
pub mod node;
pub mod state;
pub mod system;
pub mod update;
pub mod userdata;
