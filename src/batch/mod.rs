//! Batch jobs from files: streaming input, SQLite checkpoints, and the runner that resumes them.
pub mod checkpoint;
pub mod input;
