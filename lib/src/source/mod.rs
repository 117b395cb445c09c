//! Stream producers: the sources at the head of a pipeline.

pub use backpipe_kit::emit;
pub mod files;
pub mod walk;
