//! Fine-tuning from released weights (`dino train --init FILE`): the student's and the
//! teacher's backbones start from the file's, as DINOv2's `student.pretrained_weights` loads
//! them into the student before the teacher copies it; the heads start fresh (a released
//! backbone has none, and a head's prototypes belong to the run's `--out-dim`).
//!
//! The backbone's shape comes from the file: `--arch`, `--patch-size`, `--depth`,
//! `--registers` and `--layerscale` may be given only when they agree with it. Its
//! configuration is saved in the run's `config.json`, so a resume never needs the file again.

use std::path::Path;

use anyhow::{Result, bail};
use dino_model::{Family, TensorMap, VitConfig};

use crate::io::weights::{LoadOptions, load_weights};
use crate::loss::objective::Method;

use super::config::{GivenFlag, InitFrom, TrainConfig};

fn describe(vit: &VitConfig) -> String {
    let mut s = format!(
        "a {} ViT {} wide × {} blocks, patch {}",
        vit.family.display_name(),
        vit.embed_dim,
        vit.depth,
        vit.patch_size
    );
    if vit.num_register_tokens > 0 {
        s += &format!(", {} registers", vit.num_register_tokens);
    }
    if vit.layer_scale {
        s += ", LayerScale";
    }
    s
}

/// Reads `file` and makes `cfg` a run that fine-tunes its backbone; `given` are the flags
/// the user set, which must agree with the file's backbone.
pub fn resolve(cfg: &mut TrainConfig, file: &Path, given: &[GivenFlag]) -> Result<()> {
    let imported = load_weights(file, LoadOptions::default())?;
    let mut vit = imported.config.vit;
    if cfg.method() != Method::Dino && vit.family == Family::Dino {
        // iBOT needs a mask token, which a DINO backbone lacks: it starts at zero, as the
        // official `strict=False` load leaves it.
        vit.family = Family::Dinov2;
    }
    let file_has = [
        ("arch", format!("{:?}", vit.arch)),
        ("patch_size", format!("{:?}", vit.patch_size)),
        ("depth", format!("{:?}", Some(vit.depth))),
        ("registers", format!("{:?}", vit.num_register_tokens)),
    ];
    let conflicts: Vec<String> = given
        .iter()
        .filter(|(name, value, _)| match *name {
            // Any initial value agrees with a file that has LayerScale: its gammas are loaded.
            "layerscale" => (value.parse::<f64>().unwrap_or(0.0) > 0.0) != vit.layer_scale,
            _ => file_has
                .iter()
                .any(|(n, theirs)| n == name && value != theirs),
        })
        .map(|(name, value, _)| format!("--{} {value}", name.replace('_', "-")))
        .collect();
    if !conflicts.is_empty() {
        bail!(
            "{} contradict{} --init {}, which holds {}; drop {} (the backbone's shape comes from the file)",
            conflicts.join(", "),
            if conflicts.len() == 1 { "s" } else { "" },
            file.display(),
            describe(&vit),
            if conflicts.len() == 1 { "it" } else { "them" }
        );
    }
    let m = &mut cfg.model;
    m.arch = vit.arch.clone();
    m.patch_size = vit.patch_size;
    m.depth = Some(vit.depth);
    m.registers = vit.num_register_tokens;
    if !vit.layer_scale {
        m.layer_scale = 0.0;
    } else if m.layer_scale == 0.0 {
        // The gammas come from the file; a DINO run's default of 0 would say "off".
        m.layer_scale = 1e-5;
    }
    log::info!(
        "fine-tuning {} from {} ({} tensors); the heads start fresh",
        describe(&vit),
        file.display(),
        imported.tensors.len()
    );
    cfg.model.init = Some(InitFrom {
        file: file.to_path_buf(),
        backbone: vit,
    });
    Ok(())
}

/// Puts the backbone of `init.file` into `map` (a fresh model's tensors, backbone names bare,
/// head under `head.`), checking the file still holds the backbone the run was set up with.
pub fn load_backbone(init: &InitFrom, map: &mut TensorMap) -> Result<()> {
    let imported = load_weights(&init.file, LoadOptions::default())?;
    let (mut file, mut run) = (imported.config.vit, init.backbone.clone());
    // The run may have given a DINO backbone a mask token, and trains with its own drop path.
    file.family = run.family;
    (file.drop_path_rate, run.drop_path_rate) = (0.0, 0.0);
    if file != run {
        bail!(
            "{} no longer holds the backbone this run was started from ({} then, {} now); restore the file or start a new run with -o",
            init.file.display(),
            describe(&init.backbone),
            describe(&file)
        );
    }
    let mut missing = Vec::new();
    for (name, fresh) in map.iter_mut() {
        if name.starts_with("head.") || name.starts_with("ibot_head.") {
            continue;
        }
        match imported.tensors.get(name) {
            Some(t) if t.shape == fresh.shape => *fresh = t.clone(),
            Some(t) => bail!(
                "{}: `{name}` has shape {:?}, the model expects {:?}",
                init.file.display(),
                t.shape,
                fresh.shape
            ),
            None if name == "mask_token" => {
                log::info!(
                    "{} has no mask token; iBOT's starts at zero",
                    init.file.display()
                )
            }
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} lacks {} backbone tensors the model needs (first: `{}`)",
            init.file.display(),
            missing.len(),
            missing[0]
        );
    }
    Ok(())
}
