//! The state one training step updates: student, EMA teacher, optimiser, the losses' centres,
//! the loss scaler and DINOv3's Gram teacher; and how a fresh run builds it.

use anyhow::Result;
use burn::tensor::Device;
use dino_model::{DinoModel, ModelConfig, Precision, TensorMap, VisionTransformer};

use crate::loss::dino::DinoLoss;
use crate::loss::ibot::IbotLoss;
use crate::optim::amp::LossScaler;
use crate::optim::optimizer::Optimizer;

use super::config::TrainConfig;

/// The state one DINO step updates.
pub struct Networks {
    /// The student, on the autodiff device.
    pub student: DinoModel,
    /// The EMA teacher, on the plain device.
    pub teacher: DinoModel,
    /// Optimiser state of the student.
    pub optim: Optimizer,
    /// The loss with its running centre.
    pub loss: DinoLoss,
    /// Dynamic loss scaling, present with `--precision f16`.
    pub scaler: Option<LossScaler>,
    /// The iBOT loss with its running centre (DINOv2).
    pub ibot: Option<IbotLoss>,
    /// DINOv3's Gram teacher, a frozen earlier copy of the teacher's backbone, once anchoring
    /// has begun.
    pub gram: Option<VisionTransformer>,
}

impl Networks {
    /// A fresh run's networks: the student initialised from `cfg.run.seed`, the teacher an exact
    /// copy (`teacher.load_state_dict(student.state_dict())`), both computing in
    /// `cfg.optim.precision`.
    pub fn fresh(cfg: &TrainConfig, mc: &ModelConfig, device: &Device) -> Result<Self> {
        // Initialise on the CPU backend whatever the device: the same seed then gives the
        // same weights on every backend, so runs compare across machines.
        let cpu = Device::flex();
        cpu.seed(cfg.run.seed);
        let init = mc.init(&cpu)?;
        let mut map = TensorMap::new();
        init.save_tensors(&mut map, "");
        if cfg.model.layer_scale > 0.0 {
            // `--layerscale INIT`: the model draws its gammas at DINOv2's 1e-5.
            let value = cfg.model.layer_scale as f32;
            for (name, t) in map.iter_mut() {
                if name.ends_with(".ls1.gamma") || name.ends_with(".ls2.gamma") {
                    t.data.iter_mut().for_each(|g| *g = value);
                }
            }
        }
        if let Some(from) = &cfg.model.init {
            super::init::load_backbone(from, &mut map)?;
        }
        Ok(Self {
            student: mc
                .load(&map, "", &device.clone().autodiff())?
                .with_precision(cfg.optim.precision),
            teacher: mc
                .load(&map, "", device)?
                .with_precision(cfg.optim.precision),
            optim: Optimizer::new(cfg.optim.optimizer),
            loss: fresh_dino_loss(cfg),
            scaler: fresh_loss_scaler(cfg),
            ibot: fresh_ibot_loss(cfg),
            gram: None,
        })
    }
}

/// The DINO loss a run starts with (zero centre).
pub fn fresh_dino_loss(cfg: &TrainConfig) -> DinoLoss {
    let o = &cfg.objective;
    DinoLoss::new(cfg.model.out_dim, o.student_temp, o.center_momentum)
}

/// The iBOT loss a DINOv2 run starts with (zero centre); `None` for DINO.
pub fn fresh_ibot_loss(cfg: &TrainConfig) -> Option<IbotLoss> {
    let o = &cfg.objective;
    o.dinov2
        .as_ref()
        .map(|_| IbotLoss::new(cfg.model.out_dim, o.student_temp, o.center_momentum))
}

/// The loss scaler an f16 run starts with (`None` in f32).
pub fn fresh_loss_scaler(cfg: &TrainConfig) -> Option<LossScaler> {
    (cfg.optim.precision == Precision::F16).then_some(LossScaler {
        scale: cfg.optim.loss_scale,
        growth_tracker: 0,
    })
}
