//! Stream producers: the sources at the head of a pipeline.

pub mod emit;
pub mod files;
pub mod walk;
