//! The `dino` command line: the flags of `dino train` (`args`), a training config file with
//! `key=value` overrides (`config_file`), the subcommands (`commands`), `dino linear`
//! (`linear`), `dino bench` (`bench`), the device choice (`device`), a new run's plan and its
//! question (`plan`), progress bars (`progress`) and CubeCL's autotune cache
//! (`autotune_cache`).
//! The top floor: it may import every other folder, and none imports it.

pub mod args;
pub mod autotune_cache;
pub mod bench;
pub mod commands;
pub mod config_file;
pub mod device;
pub mod linear;
pub mod plan;
pub mod progress;
