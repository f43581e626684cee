//! Errors of the model crate: every variant says what was wrong and what was expected.

use thiserror::Error;

/// Everything that can go wrong while building, loading or importing a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The bytes are not a valid safetensors file (truncated, corrupt header, bad offsets).
    #[error("not a valid safetensors file: {reason}")]
    Safetensors {
        /// What the safetensors parser reported.
        reason: String,
    },
    /// A safetensors file without the dinoscope config in its metadata and no way to infer one.
    #[error(
        "the file has no dinoscope model config in its metadata (key `{key}`); import it first with `dino import <file> -o <out.safetensors>`"
    )]
    MissingConfig {
        /// The metadata key that was looked for.
        key: String,
    },
    /// The JSON config in the metadata could not be parsed.
    #[error("the model config in the checkpoint metadata is not valid: {reason}")]
    BadConfig {
        /// What the JSON parser reported.
        reason: String,
    },
    /// A configuration that cannot describe a working model.
    #[error("invalid model configuration: {reason}")]
    InvalidConfig {
        /// Which constraint was broken.
        reason: String,
    },
    /// A tensor that the model needs is absent.
    #[error("tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        /// Official key of the tensor.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A tensor exists but has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Official key of the tensor.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor's element type cannot be converted to f32.
    #[error("tensor `{name}` has unsupported dtype {dtype}; expected F32, F16, BF16 or F64")]
    UnsupportedDtype {
        /// Official key of the tensor.
        name: String,
        /// The dtype found in the file.
        dtype: String,
    },
    /// A tensor contains NaN or infinite values.
    #[error(
        "tensor `{name}` contains non-finite values (NaN or infinity); the checkpoint is corrupt or training diverged"
    )]
    NonFinite {
        /// Official key of the tensor.
        name: String,
    },
    /// The network's outputs on an image are NaN or infinite: weights or preprocessing
    /// values that are finite but absurd (a forged file), which no map could show.
    #[error(
        "the network's {what} on this image are not finite: the model's weights or its pixel statistics are not usable (a corrupt or forged file)"
    )]
    NonFiniteOutput {
        /// Which outputs.
        what: String,
    },
    /// A PyTorch `.pth` file that our restricted reader refuses or cannot parse.
    #[error("cannot read PyTorch checkpoint: {reason}")]
    Pth {
        /// What was wrong, in words.
        reason: String,
    },
    /// The file is of a kind that we do not know how to import.
    #[error("unrecognised weight file: {reason}")]
    UnknownFormat {
        /// What was found instead.
        reason: String,
    },
    /// The shapes of the weights do not correspond to any Vision Transformer we can build.
    #[error("cannot infer the architecture from the weights: {reason}")]
    Infer {
        /// Which tensor or dimension did not fit.
        reason: String,
    },
    /// A Hugging Face `config.json` field that contradicts the tensors of the file.
    #[error("config.json field `{field}`: {reason}")]
    ConfigMismatch {
        /// The field of config.json.
        field: String,
        /// What the field says and what the tensors say.
        reason: String,
    },
    /// The file holds tensors that the inferred network does not use: its maps would be wrong.
    #[error(
        "{} tensor(s) of the file are not part of a {model}: {}; the weights are of a network dinoscope does not know, and showing its maps without them would be wrong. If you know they do not matter, import with --allow-unused",
        names.len(),
        list_names(names)
    )]
    UnknownTensors {
        /// What the rest of the file looks like.
        model: String,
        /// The tensors that are not understood.
        names: Vec<String>,
    },
    /// A model too large for the memory it would run in.
    #[error("{model} needs about {needed_mib} MiB of memory for its weights alone; {available}")]
    TooLarge {
        /// What the model is.
        model: String,
        /// Memory needed, in MiB.
        needed_mib: u64,
        /// What is available, in words.
        available: String,
    },
    /// An image that cannot be decoded or is unusable.
    #[error("image: {reason}")]
    Image {
        /// What was wrong, in words.
        reason: String,
    },
}

fn list_names(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(6).map(|n| format!("`{n}`")).collect();
    let more = names.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Result alias of the model crate.
pub type Result<T> = std::result::Result<T, ModelError>;
