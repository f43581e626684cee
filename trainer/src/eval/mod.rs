//! What the features are worth: the official k-NN protocol (`knn`) and linear probe
//! (`linear`), the in-training k-NN
//! and the attention masks' Jaccard (`probes`),
//! attention maps as pictures (`render`) and the line plots of a run (`plot`). May import
//! `data` and `io`.

pub mod knn;
pub mod linear;
pub mod plot;
pub mod probes;
pub mod render;
