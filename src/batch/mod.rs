//! The batch runner (docs/contract.md §5): job files, input, checkpoints, output. A job file
//! (`job`) says how each input record becomes a chat request on a route and what its answer must
//! be; the runner sends every record of an input file through the engine, checkpointing each item
//! so that a killed run resumes without paying for finished items again. A job with
//! `mode = "deferred"` first sends its items to a provider's batch API (`deferred`).

pub mod checkpoint;
pub mod deferred;
mod embed;
pub mod input;
pub mod job;
mod retry;
pub mod runner;
pub mod source;
