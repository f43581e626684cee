//! What background work sends back to the app: loaded models, read files, finished
//! analyses, and the web worker's news. Threads, web tasks and the compute worker all answer
//! with a [`Job`] on the app's channel.

use image::RgbImage;

use crate::infer::{Analysis, LoadedModel};

/// Results of background work.
pub enum Job {
    /// A checkpoint finished loading.
    Model(Result<LoadedModel, String>),
    /// A file was read (name, bytes) and needs classifying.
    File(String, Result<Vec<u8>, String>),
    /// An analysis finished.
    Analysis(Result<Analysis, String>),
    /// An image file was decoded off the main thread (web worker).
    Image(String, Result<RgbImage, String>),
    /// Background work panicked (a bug): what it was doing is abandoned, with this message.
    Crashed(String),
    /// The web viewer's compute worker died; work falls back to the page.
    WorkerFailed(String),
    /// The worker reports where it computes, then the job it finished.
    Backend(String, Box<Job>),
    /// A model downloaded from the Hugging Face Hub: its name, weights and config.json.
    Checkpoint(String, Vec<u8>, Option<String>),
    /// Progress worth showing in the status line (downloads).
    Status(String),
}
