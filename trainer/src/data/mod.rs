//! Images in, crops out: the data sources (image folders, CIFAR-10/STL-10 binaries, the
//! synthetic objects set), the multi-crop augmentation, iBOT's masks and the loader threads
//! that shard, shuffle and batch them. Imports `distributed` (the shard of this process) only.

pub mod augment;
pub mod masking;
pub mod pipeline;
pub mod sources;
pub mod synth;
