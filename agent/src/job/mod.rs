//! Jobs: the record of one ticket's image (and client data) going onto one disk
//! ([`record`]), its persisted [`journal`], the [`runner`] that drives it through its states
//! over the [`steps`] that do the real work, the admission checks that gate it, the shared
//! write that lets several jobs of one image write together, and the service [`report`].

pub mod admission;
mod id;
pub mod journal;
mod record;
pub mod report;
mod results;
pub mod runner;
pub mod shared_write;
pub mod steps;

pub use id::{BadJobId, JobId};
pub use record::*;
pub use results::*;
