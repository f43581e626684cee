//! Everything that defines a run, in sections: the model it trains, its data, its optimiser,
//! its objective, its schedules and the run itself. Each part of the trainer receives its own
//! section (the loader the data section, `Schedules` the schedule section, the losses the
//! objective section), the way burn's nested `#[derive(Config)]` and DINOv2's YAML sections
//! (`cfg.ibot.*`) are cut. Saved as the run's `config.json` and inside every checkpoint;
//! `config.json` files written before the sections existed (version 1, one flat object) are
//! read by [`TrainConfig::from_json`].
//!
//! The lowest room of `train/`: it imports the sections' own types from `data`, `loss` and
//! `optim`, and nothing of `train`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use dino_model::{Family, HeadConfig, ModelConfig, Position, Precision, VitConfig};
use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::data::pipeline::DataConfig;
use crate::loss::gram::GramAnchoring;
use crate::loss::objective::{Dinov2Objective, Method, ObjectiveConfig};
use crate::optim::optimizer::{Dinov2Groups, OptimConfig};
use crate::optim::schedule::{ScheduleConfig, ScheduleRule};

/// The version of `config.json` this build writes.
pub const CONFIG_VERSION: u32 = 2;

/// Everything that defines a run; saved as `config.json` and inside every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// [`CONFIG_VERSION`] of the file.
    pub version: u32,
    /// The networks: backbone, heads, and where their weights start.
    pub model: ModelSection,
    /// Images, batch and crops.
    pub data: DataConfig,
    /// How the student is updated.
    pub optim: OptimConfig,
    /// What the step optimises.
    pub objective: ObjectiveConfig,
    /// Learning rate, weight decay, teacher momentum and temperature over the run.
    pub schedule: ScheduleConfig,
    /// Seed and processes.
    pub run: RunSection,
}

/// The model section: the backbone and heads a run trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Backbone preset (`vit_tiny`, `vit_small`, `vit_base`).
    pub arch: String,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Override of the number of blocks (small demos and tests); `None` keeps the preset's 12.
    pub depth: Option<usize>,
    /// Stochastic depth rate of the student.
    pub drop_path_rate: f64,
    /// Register tokens between CLS and the patches (`student.num_register_tokens`).
    pub registers: usize,
    /// LayerScale's initial value on every residual branch; 0 turns it off
    /// (`student.layerscale`).
    pub layer_scale: f64,
    /// Prototypes of the DINO head.
    pub out_dim: usize,
    /// Hidden width of the head MLP.
    pub head_hidden_dim: usize,
    /// Bottleneck width of the head.
    pub head_bottleneck_dim: usize,
    /// Freeze the last layer's weight-norm gain at 1.
    pub norm_last_layer: bool,
    /// iBOT's masked patches go through a head of their own (`ibot.separate_head`: false in
    /// DINOv2's default config, always in DINOv3).
    pub ibot_separate_head: bool,
    /// The released weights the backbones start from (`--init`), when fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitFrom>,
}

impl Default for ModelSection {
    /// `main_dino.py`'s ViT-S/16 with its 65536-prototype head.
    fn default() -> Self {
        Self {
            arch: "vit_small".into(),
            patch_size: 16,
            depth: None,
            drop_path_rate: 0.1,
            registers: 0,
            layer_scale: 0.0,
            out_dim: 65536,
            head_hidden_dim: 2048,
            head_bottleneck_dim: 256,
            norm_last_layer: true,
            ibot_separate_head: false,
            init: None,
        }
    }
}

/// The run section: what makes a run reproducible besides its hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Seed of initialisation, data order, augmentation and stochastic depth.
    pub seed: u64,
    /// Processes sharing each step (`mpirun -np N`); the batch size is per process, as the
    /// official `--batch_size_per_gpu`.
    pub world_size: usize,
}

/// Where a fine-tuning run's backbone came from, saved with the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitFrom {
    /// The weight file as the user named it.
    pub file: PathBuf,
    /// The backbone it holds (the run trains this shape).
    pub backbone: VitConfig,
}

/// A setting the user gave (a flag, or a key of a config file): its name as `TrainConfig`'s
/// field, the given value and the value it replaced, both as `{:?}` writes them.
pub type GivenFlag = (&'static str, String, String);

impl Default for TrainConfig {
    /// The official `main_dino.py` defaults, on the synthetic set.
    fn default() -> Self {
        Self::for_method(Method::Dino)
    }
}

impl TrainConfig {
    /// The defaults of `method`: `main_dino.py`'s for DINO; for DINOv2 those of
    /// `ssl_default_config.yaml` (ViT-S/16 here, as DINO's default: learning rate 0.004 for a
    /// batch of 1024 under the square-root rule, drop path 0.3 uniform, LayerScale 1e-5,
    /// teacher momentum 0.992, teacher temperature 0.04 → 0.07 over 30 epochs, crop scales
    /// 0.32 / 0.05–0.32, the weight-normalised last layer's gain trained, the official blur
    /// probabilities); DINOv3's differ from DINOv2's in their learning rate (0.001), a separate
    /// iBOT head with plain last layers, Sinkhorn-Knopp, Gram anchoring and the blur.
    pub fn for_method(method: Method) -> Self {
        let dino = ModelSection::default();
        let (model, crops, schedule) = match method {
            Method::Dino => (dino, AugmentConfig::default(), ScheduleConfig::default()),
            Method::Dinov2 | Method::Dinov3 => (
                ModelSection {
                    drop_path_rate: 0.3,
                    layer_scale: 1e-5,
                    norm_last_layer: false,
                    ibot_separate_head: method == Method::Dinov3,
                    ..dino
                },
                if method == Method::Dinov3 {
                    AugmentConfig::dinov3()
                } else {
                    AugmentConfig::dinov2()
                },
                if method == Method::Dinov3 {
                    ScheduleConfig::dinov3()
                } else {
                    ScheduleConfig::dinov2()
                },
            ),
        };
        Self {
            version: CONFIG_VERSION,
            model,
            data: DataConfig {
                crops,
                ..DataConfig::default()
            },
            optim: OptimConfig {
                dinov2: (method != Method::Dino).then(Dinov2Groups::default),
                ..OptimConfig::default()
            },
            objective: ObjectiveConfig::for_method(method),
            schedule,
            run: RunSection {
                seed: 0,
                world_size: 1,
            },
        }
    }

    /// The recipe.
    pub fn method(&self) -> Method {
        self.objective.method
    }

    /// Checks what the sections must agree on: the DINOv2 settings are present exactly for a
    /// DINOv2 or DINOv3 run, Gram anchoring exactly for DINOv3. A file that breaks this was
    /// edited by hand or written by something else.
    pub fn check_consistent(&self) -> Result<()> {
        let method = self.method();
        let v2 = method != Method::Dino;
        if self.objective.dinov2.is_some() != v2 || self.optim.dinov2.is_some() != v2 {
            bail!(
                "config.json is inconsistent: method {method:?} with{} DINOv2 settings (objective.dinov2, optim.dinov2); start a new run with -o",
                if v2 { "out" } else { "" }
            );
        }
        if (method == Method::Dinov3) != self.gram().is_some() {
            bail!(
                "config.json is inconsistent: method {method:?} with{} Gram anchoring; start a new run with -o",
                if self.gram().is_some() { "" } else { "out" }
            );
        }
        Ok(())
    }

    /// The Gram anchoring of a DINOv3 run.
    pub fn gram(&self) -> Option<&GramAnchoring> {
        self.objective.gram()
    }

    /// Side of the Gram teacher's crops, when it is not the global crops' (which it then sees).
    pub fn gram_crop_size(&self) -> Option<u32> {
        let g = self.gram()?;
        let global = self.data.crops.global_size;
        let size = g.size.unwrap_or(2 * global);
        (size != global).then_some(size)
    }

    /// The augmentation the loader runs: the saved one, with the Gram teacher's crops.
    pub fn loader_augment(&self) -> AugmentConfig {
        AugmentConfig {
            gram_size: self.gram_crop_size(),
            ..self.data.crops.clone()
        }
    }

    /// How the schedules scale and step for this recipe.
    pub fn schedule_rule(&self) -> ScheduleRule {
        match self.method() {
            Method::Dino => ScheduleRule::Dino,
            Method::Dinov2 | Method::Dinov3 => ScheduleRule::Dinov2,
        }
    }

    /// The model this run trains.
    pub fn model_config(&self) -> Result<ModelConfig> {
        self.check_consistent()?;
        self.model
            .model_config(self.method(), self.data.crops.global_size)
    }

    /// Reads a `config.json`: this version's sections, or a version-1 file (one flat object,
    /// written before the sections existed), which becomes the same run in sections.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let version = value.get("version").and_then(|v| v.as_u64());
        let cfg = match version {
            None if value.get("arch").is_some() => serde_json::from_value::<v1::FlatConfig>(value)
                .context("reading a version-1 config")?
                .into_sections(),
            Some(v) if v == u64::from(CONFIG_VERSION) => serde_json::from_value(value)?,
            Some(v) => bail!(
                "config version {v} is not one this build reads (it writes {CONFIG_VERSION}, and reads 1); use the dinoscope that wrote it"
            ),
            None => bail!("no `version` and no `arch`: not a dinoscope training config"),
        };
        cfg.check_consistent()?;
        Ok(cfg)
    }
}

impl ModelSection {
    /// The model of a `method` run whose global crops are `global_size` pixels: the preset of
    /// `arch` (or the `init` file's backbone, which keeps its position grid: crops of another
    /// size interpolate it, as they do at inference) with the family's tokens and layers.
    pub fn model_config(&self, method: Method, global_size: u32) -> Result<ModelConfig> {
        let mut vit = match &self.init {
            Some(init) => init.backbone.clone(),
            None => {
                let mut vit = VitConfig::by_name(&self.arch, self.patch_size)?;
                if let Some(d) = self.depth {
                    vit.depth = d;
                }
                vit.img_size = global_size as usize;
                // DINOv2's ViT: a mask token for iBOT, LayerScale, registers; its position
                // embedding is resized as DINO's (interpolate_offset 0.1, no antialias).
                // DINOv3's: RoPE (base 100) instead of a position embedding, storage tokens
                // for registers, LayerNorm eps 1e-6 (`norm_layer: layernorm`).
                match method {
                    Method::Dino => {}
                    Method::Dinov2 => vit.family = Family::Dinov2,
                    Method::Dinov3 => {
                        vit.family = Family::Dinov3;
                        vit.position = Position::Rope { base: 100.0 };
                    }
                }
                vit.layer_scale = self.layer_scale > 0.0;
                vit.num_register_tokens = self.registers;
                vit
            }
        };
        vit.drop_path_rate = self.drop_path_rate;
        let head = HeadConfig {
            hidden_dim: self.head_hidden_dim,
            bottleneck_dim: self.head_bottleneck_dim,
            norm_last_layer: self.norm_last_layer,
            // DINOv3's `DINOHead` ends in a plain `nn.Linear`.
            weight_norm: method != Method::Dinov3,
            ..HeadConfig::dino(vit.embed_dim, self.out_dim)
        };
        // The official separate head has its own `ibot.head_*` sizes, equal to the DINO
        // head's in both default configs.
        let c = ModelConfig {
            vit,
            ibot_head: self.ibot_separate_head.then(|| head.clone()),
            head: Some(head),
        };
        c.validate()?;
        Ok(c)
    }
}

/// `config.json` as this project wrote it before the sections (version 1): one flat object.
mod v1 {
    use serde::Deserialize;

    use super::*;
    use crate::data::masking::MaskSampling;
    use crate::loss::objective::Centering;
    use crate::optim::optimizer::OptimizerKind;

    fn one() -> usize {
        1
    }

    fn init_scale() -> f64 {
        crate::optim::amp::INIT_SCALE
    }

    /// The version-1 fields, as the old `TrainConfig` named them.
    #[derive(Deserialize)]
    pub(super) struct FlatConfig {
        arch: String,
        patch_size: usize,
        depth: Option<usize>,
        out_dim: usize,
        head_hidden_dim: usize,
        head_bottleneck_dim: usize,
        norm_last_layer: bool,
        drop_path_rate: f64,
        batch_size: usize,
        epochs: usize,
        lr: f64,
        min_lr: f64,
        warmup_epochs: usize,
        weight_decay: f64,
        weight_decay_end: f64,
        clip_grad: f64,
        freeze_last_layer: usize,
        momentum_teacher: f64,
        warmup_teacher_temp: f64,
        teacher_temp: f64,
        warmup_teacher_temp_epochs: usize,
        student_temp: f64,
        center_momentum: f64,
        augment: AugmentConfig,
        data: String,
        synthetic_count: usize,
        synthetic_size: u32,
        seed: u64,
        #[serde(default)]
        precision: Precision,
        #[serde(default)]
        optimizer: OptimizerKind,
        #[serde(default = "init_scale")]
        loss_scale: f64,
        #[serde(default)]
        method: Method,
        #[serde(default)]
        dinov2: Option<FlatDinov2>,
        #[serde(default)]
        init: Option<InitFrom>,
        #[serde(default = "one")]
        world_size: usize,
    }

    /// Version 1's `dinov2` object: the objective's terms with model and optimiser settings.
    #[derive(Deserialize)]
    pub(super) struct FlatDinov2 {
        dino_weight: f64,
        ibot_weight: f64,
        koleo_weight: f64,
        mask: MaskSampling,
        centering: Centering,
        layer_decay: f64,
        patch_embed_lr_mult: f64,
        registers: usize,
        layer_scale: f64,
        #[serde(default)]
        separate_ibot_head: bool,
        #[serde(default)]
        gram: Option<GramAnchoring>,
    }

    impl FlatConfig {
        /// The same run in sections.
        pub(super) fn into_sections(self) -> TrainConfig {
            let d = self.dinov2.as_ref();
            // A DINO run fine-tuned from a backbone with registers or LayerScale kept them
            // (its model came from the file); say so in the model section.
            let from_file = self.init.as_ref().map(|i| &i.backbone);
            let registers = d
                .map(|d| d.registers)
                .or(from_file.map(|b| b.num_register_tokens))
                .unwrap_or(0);
            let layer_scale =
                d.map(|d| d.layer_scale)
                    .unwrap_or(if from_file.is_some_and(|b| b.layer_scale) {
                        1e-5
                    } else {
                        0.0
                    });
            TrainConfig {
                version: CONFIG_VERSION,
                model: ModelSection {
                    arch: self.arch,
                    patch_size: self.patch_size,
                    depth: self.depth,
                    drop_path_rate: self.drop_path_rate,
                    registers,
                    layer_scale,
                    out_dim: self.out_dim,
                    head_hidden_dim: self.head_hidden_dim,
                    head_bottleneck_dim: self.head_bottleneck_dim,
                    norm_last_layer: self.norm_last_layer,
                    ibot_separate_head: d.is_some_and(|d| d.separate_ibot_head),
                    init: self.init,
                },
                data: DataConfig {
                    source: self.data,
                    batch_size: self.batch_size,
                    synthetic_count: self.synthetic_count,
                    synthetic_size: self.synthetic_size,
                    crops: self.augment,
                },
                optim: OptimConfig {
                    optimizer: self.optimizer,
                    clip_grad: self.clip_grad,
                    precision: self.precision,
                    loss_scale: self.loss_scale,
                    dinov2: d.map(|d| Dinov2Groups {
                        layer_decay: d.layer_decay,
                        patch_embed_lr_mult: d.patch_embed_lr_mult,
                    }),
                },
                objective: ObjectiveConfig {
                    method: self.method,
                    student_temp: self.student_temp,
                    center_momentum: self.center_momentum,
                    dinov2: self.dinov2.map(|d| Dinov2Objective {
                        dino_weight: d.dino_weight,
                        ibot_weight: d.ibot_weight,
                        koleo_weight: d.koleo_weight,
                        mask: d.mask,
                        centering: d.centering,
                        gram: d.gram,
                    }),
                },
                schedule: ScheduleConfig {
                    epochs: self.epochs,
                    lr: self.lr,
                    min_lr: self.min_lr,
                    warmup_epochs: self.warmup_epochs,
                    weight_decay: self.weight_decay,
                    weight_decay_end: self.weight_decay_end,
                    freeze_last_layer: self.freeze_last_layer,
                    momentum_teacher: self.momentum_teacher,
                    warmup_teacher_temp: self.warmup_teacher_temp,
                    teacher_temp: self.teacher_temp,
                    warmup_teacher_temp_epochs: self.warmup_teacher_temp_epochs,
                },
                run: RunSection {
                    seed: self.seed,
                    world_size: self.world_size,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_round_trips_through_json() {
        for m in [Method::Dino, Method::Dinov2, Method::Dinov3] {
            let cfg = TrainConfig::for_method(m);
            let text = serde_json::to_string_pretty(&cfg).unwrap();
            assert_eq!(TrainConfig::from_json(&text).unwrap(), cfg);
            cfg.model_config().unwrap();
        }
    }

    #[test]
    fn an_unknown_key_or_version_is_refused() {
        let mut v = serde_json::to_value(TrainConfig::default()).unwrap();
        v["schedule"]["lr_typo"] = 1.0.into();
        let err = TrainConfig::from_json(&v.to_string()).unwrap_err();
        assert!(format!("{err:#}").contains("lr_typo"), "{err:#}");
        let mut v = serde_json::to_value(TrainConfig::default()).unwrap();
        v["version"] = 9.into();
        let err = TrainConfig::from_json(&v.to_string()).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn inconsistent_sections_are_refused() {
        let mut cfg = TrainConfig::for_method(Method::Dinov2);
        cfg.objective.method = Method::Dino;
        let err = cfg.model_config().unwrap_err().to_string();
        assert!(err.contains("inconsistent"), "{err}");
        let mut cfg = TrainConfig::for_method(Method::Dinov3);
        cfg.objective.method = Method::Dinov2;
        let err = cfg.model_config().unwrap_err().to_string();
        assert!(err.contains("Gram"), "{err}");
    }
}
