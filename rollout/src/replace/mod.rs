//! Replacing nodes. [`replace`] swaps one old node for a given new one; [`roll`] replaces a whole
//! pool surge-first: provision a replacement, wait until it is Ready with the target bundle, drain
//! and delete the old node, decommission it. Progress is kept in annotations on the nodes, so an
//! interrupted roll resumes where it stopped; a replacement that never becomes Ready halts the roll
//! and leaves the remaining old nodes untouched.

mod annotations;
mod canary;
mod duration;
mod hook;
mod roll;
mod roll_plan;
mod roll_status;
mod single;

pub use annotations::*;
pub use duration::*;
pub use hook::*;
pub use roll::*;
pub use roll_plan::*;
pub use roll_status::*;
pub use single::*;
