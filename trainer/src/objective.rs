//! What a training step optimises: DINO's cross-view loss (`main_dino.py`), or DINOv2's
//! (`train/ssl_meta_arch.py` `SSLMetaArch.forward_backward`): the same DINO term on the CLS
//! tokens plus the iBOT loss on masked patches and the KoLeo regulariser, and for DINOv3 the
//! Gram anchoring term. Each loss lives in its own module (`loss`, `ibot`, `koleo`,
//! `sinkhorn`, `masking`, `gram`); this one composes them into one forward pass of student
//! and teacher, which the single step of `step.rs` runs.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use clap::ValueEnum;
use dino_model::{DinoModel, DropPathMasks, VisionTransformer};
use serde::{Deserialize, Serialize};

use crate::gram::{GramAnchoring, gram_loss, resize_patch_grid};
use crate::ibot::IbotLoss;
use crate::koleo::koleo_loss;
use crate::loss::{DinoLoss, TeacherStats};
use crate::masking::{BatchMasks, MaskSampling};
use crate::optim::Dinov2Rules;
use crate::sinkhorn::{SINKHORN_ITERATIONS, sinkhorn_knopp};

/// The training recipe of a run (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// DINO (Caron et al. 2021), `main_dino.py`.
    #[default]
    Dino,
    /// DINOv2 (Oquab et al. 2023), `dinov2/train/train.py` with `ssl_default_config.yaml`.
    Dinov2,
    /// DINOv3 (Siméoni et al. 2025), `dinov3/train/train.py`: DINOv2's objective with a
    /// separate iBOT head, plain last layers, Sinkhorn-Knopp, a RoPE ViT and Gram anchoring.
    Dinov3,
}

/// How the teacher's scores become targets (`train.centering`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Centering {
    /// Subtract a running mean of the teacher's scores, then a sharpened softmax
    /// (`"centering"`, the default).
    #[default]
    Mean,
    /// Three Sinkhorn-Knopp iterations (`"sinkhorn_knopp"`, DINOv2's ViT-L/g recipe).
    Sinkhorn,
}

impl Centering {
    /// Parses `mean`/`sinkhorn` and the official config spellings `centering`/`sinkhorn_knopp`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "mean" | "centering" => Ok(Self::Mean),
            "sinkhorn" | "sinkhorn_knopp" => Ok(Self::Sinkhorn),
            other => Err(format!(
                "`{other}` is not a centering; expected mean (official: centering) or sinkhorn (sinkhorn_knopp)"
            )),
        }
    }
}

/// DINOv2's objective and model settings (`ssl_default_config.yaml`), saved with the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dinov2Objective {
    /// Weight of the DINO CLS term (`dino.loss_weight`, 1.0).
    pub dino_weight: f64,
    /// Weight of the iBOT masked-patch term (`ibot.loss_weight`, 1.0).
    pub ibot_weight: f64,
    /// Weight of the KoLeo term (`dino.koleo_loss_weight`, 0.1).
    pub koleo_weight: f64,
    /// Which global crops are masked and how much (`ibot.mask_sample_probability` 0.5,
    /// `ibot.mask_ratio_min_max` 0.1–0.5).
    pub mask: MaskSampling,
    /// Teacher target centering (`train.centering`).
    pub centering: Centering,
    /// Layer-wise learning-rate decay (`optim.layerwise_decay`, 0.9).
    pub layer_decay: f64,
    /// Learning-rate multiplier of the patch embedding (`optim.patch_embed_lr_mult`, 0.2).
    pub patch_embed_lr_mult: f64,
    /// Register tokens of the backbone (`student.num_register_tokens`, 0).
    pub registers: usize,
    /// LayerScale's initial value on every residual branch; 0 turns it off
    /// (`student.layerscale`, 1e-5).
    pub layer_scale: f64,
    /// iBOT's masked patches go through a head of their own (`ibot.separate_head`: false in
    /// DINOv2's default config, always in DINOv3).
    #[serde(default)]
    pub separate_ibot_head: bool,
    /// DINOv3's Gram anchoring (absent for DINOv2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gram: Option<GramAnchoring>,
}

impl Default for Dinov2Objective {
    fn default() -> Self {
        Self {
            dino_weight: 1.0,
            ibot_weight: 1.0,
            koleo_weight: 0.1,
            mask: MaskSampling {
                probability: 0.5,
                ratio: (0.1, 0.5),
                target_at_max: false,
            },
            centering: Centering::Mean,
            layer_decay: 0.9,
            patch_embed_lr_mult: 0.2,
            registers: 0,
            layer_scale: 1e-5,
            separate_ibot_head: false,
            gram: None,
        }
    }
}

impl Dinov2Objective {
    /// DINOv3's `ssl_default_config.yaml` with the gram-anchor recipe's Gram loss: Sinkhorn-Knopp
    /// centering (the only one its `SSLMetaArch` accepts) and a separate iBOT head.
    pub fn dinov3() -> Self {
        Self {
            centering: Centering::Sinkhorn,
            separate_ibot_head: true,
            gram: Some(GramAnchoring::default()),
            ..Self::default()
        }
    }
}

impl Dinov2Objective {
    /// The optimiser rules this objective trains with.
    pub fn rules(&self, depth: usize) -> Dinov2Rules {
        Dinov2Rules {
            depth,
            layer_decay: self.layer_decay,
            patch_embed_lr_mult: self.patch_embed_lr_mult,
        }
    }
}

/// The crops of one step as the student and teacher take them.
pub struct StepInputs {
    /// Global crops `[2B, 3, G, G]`, crop-major, on the autodiff device.
    pub globals: Tensor<4>,
    /// Local crops `[L·B, 3, l, l]`, crop-major, when the run has any.
    pub locals: Option<Tensor<4>>,
    /// Stochastic depth of the student per crop group (global, local).
    pub drop: [Option<DropPathMasks>; 2],
    /// The masked patches of the student's global crops (DINOv2).
    pub masks: Option<BatchMasks>,
    /// DINOv3: the Gram teacher's crops `[2B, 3, S, S]` on the plain device when they are
    /// larger than the global crops (else it sees the global crops), and this step's weight.
    pub gram: Option<(Option<Tensor<4>>, f64)>,
}

/// The loss of one step and what it is made of.
pub struct Losses {
    /// The total to differentiate, `[1]`.
    pub total: Tensor<1>,
    /// Each term before its weight, by the name `metrics.jsonl` gives it.
    pub terms: Vec<(&'static str, Tensor<1>)>,
    /// Teacher statistics of the CLS targets.
    pub stats: TeacherStats,
}

/// DINO: the student on every crop, the teacher on the global crops, one cross-entropy per
/// (teacher crop, other student crop) pair, averaged.
pub fn dino_losses(
    student: &DinoModel,
    teacher: &DinoModel,
    loss: &mut DinoLoss,
    inputs: StepInputs,
    teacher_temp: f64,
    device: &Device,
) -> Losses {
    let StepInputs {
        globals,
        locals,
        drop,
        ..
    } = inputs;
    let [rows_g, ..] = globals.dims();
    let ncrops = 2 + locals.as_ref().map_or(0, |l| l.dims()[0] / (rows_g / 2));
    let teacher_in = globals.clone().inner();
    let mut feats = vec![student.backbone.forward_train(globals, drop[0].as_ref())];
    if let Some(locals) = locals {
        feats.push(student.backbone.forward_train(locals, drop[1].as_ref()));
    }
    let student_out = head(student).forward(Tensor::cat(feats, 0));
    let teacher_out = head(teacher).forward(teacher.backbone.forward(teacher_in.to_device(device)));
    let (l, stats) = loss.forward(
        student_out,
        Tensor::from_inner(teacher_out),
        ncrops,
        teacher_temp,
    );
    let total = l.reshape([1]);
    Losses {
        terms: vec![("dino_loss", total.clone())],
        total,
        stats,
    }
}

/// DINOv2 (`SSLMetaArch.forward_backward` with a shared DINO/iBOT head): the teacher on the
/// unmasked global crops gives CLS targets and, at the student's masked positions, patch
/// targets; the student sees the global crops with masked patches replaced by the mask token
/// and the local crops; one head pass each over [CLS; masked patches]. The DINO term is
/// DINO's pair average (the official local and global terms over the same pair count); KoLeo
/// runs on the student's pre-head global CLS, one global crop at a time, summed. With a
/// separate iBOT head the masked patches go through it instead (DINOv3's and DINOv2's
/// `separate_head`); with a Gram teacher (DINOv3) the student's global patch tokens are held
/// to its patch similarities (`get_gram_teacher_output`).
#[allow(clippy::too_many_arguments)]
pub fn dinov2_losses(
    student: &DinoModel,
    teacher: &DinoModel,
    gram_teacher: Option<&VisionTransformer>,
    (loss, ibot): (&mut DinoLoss, &mut IbotLoss),
    objective: &Dinov2Objective,
    inputs: StepInputs,
    teacher_temp: f64,
    device: &Device,
) -> Losses {
    let StepInputs {
        globals,
        locals,
        drop,
        masks,
        gram,
    } = inputs;
    let masks = masks.expect("DINOv2 steps are given masks");
    let [rows_g, ..] = globals.dims();
    let batch = rows_g / 2;
    let rows_l = locals.as_ref().map_or(0, |l| l.dims()[0]);
    let ncrops = 2 + rows_l / batch;
    let prefix = student.backbone.prefix_tokens();
    let patches = masks.patches;
    let masked = masks.indices.len();
    let ad_device = globals.device();
    let indices = |on: &Device| {
        let v: Vec<i64> = masks.indices.iter().map(|&i| i as i64).collect();
        Tensor::<1, Int>::from_data(TensorData::new(v, [masked]), on)
    };

    // Teacher: CLS and the masked positions' patch tokens through its head(s); one pass
    // when the head is shared.
    let teacher_globals = globals.clone().inner().to_device(device);
    let t_tokens = teacher
        .backbone
        .forward_tokens(teacher_globals.clone(), None);
    let dim = t_tokens.dims()[2];
    let t_cls = t_tokens.clone().narrow(1, 0, 1).reshape([rows_g, dim]);
    let t_masked = (masked > 0).then(|| {
        t_tokens
            .narrow(1, prefix, patches)
            .reshape([rows_g * patches, dim])
            .select(0, indices(device))
    });
    let (t_cls_out, t_patch_out) = match (&teacher.ibot_head, t_masked) {
        (Some(ibot_head), t_masked) => (
            Tensor::<2>::from_inner(head(teacher).forward(t_cls)),
            t_masked.map(|m| Tensor::<2>::from_inner(ibot_head.forward(m))),
        ),
        (None, None) => (Tensor::<2>::from_inner(head(teacher).forward(t_cls)), None),
        (None, Some(m)) => {
            let t_out =
                Tensor::<2>::from_inner(head(teacher).forward(Tensor::cat(vec![t_cls, m], 0)));
            (
                t_out.clone().narrow(0, 0, rows_g),
                Some(t_out.narrow(0, rows_g, masked)),
            )
        }
    };

    // Student: masked global crops, local crops, one head pass.
    let mask_tensor = Tensor::<2, Bool>::from_data(
        TensorData::new(masks.masks.clone(), [rows_g, patches]),
        &ad_device,
    );
    let s_tokens =
        student
            .backbone
            .forward_tokens_masked(globals, Some(mask_tensor), drop[0].as_ref());
    let s_cls = s_tokens.clone().narrow(1, 0, 1).reshape([rows_g, dim]);
    let s_patches = s_tokens.narrow(1, prefix, patches);
    let mut s_in = vec![s_cls.clone()];
    if let Some(locals) = locals {
        s_in.push(student.backbone.forward_train(locals, drop[1].as_ref()));
    }
    let s_masked = (masked > 0).then(|| {
        s_patches
            .clone()
            .reshape([rows_g * patches, dim])
            .select(0, indices(&ad_device))
    });
    let (s_cls_out, s_patch_out) = match (&student.ibot_head, s_masked) {
        (Some(ibot_head), s_masked) => (
            head(student).forward(Tensor::cat(s_in, 0)),
            s_masked.map(|m| ibot_head.forward(m)),
        ),
        (None, None) => (head(student).forward(Tensor::cat(s_in, 0)), None),
        (None, Some(m)) => {
            s_in.push(m);
            let s_out = head(student).forward(Tensor::cat(s_in, 0));
            (
                s_out.clone().narrow(0, 0, rows_g + rows_l),
                Some(s_out.narrow(0, rows_g + rows_l, masked)),
            )
        }
    };

    let (dino, stats) = match objective.centering {
        Centering::Mean => loss.forward(s_cls_out, t_cls_out, ncrops, teacher_temp),
        Centering::Sinkhorn => {
            let q = sinkhorn_knopp(t_cls_out, teacher_temp, SINKHORN_ITERATIONS);
            loss.forward_with_targets(s_cls_out, q, ncrops)
        }
    };
    let dino = dino.reshape([1]);
    let koleo = (0..2)
        .map(|c| koleo_loss(s_cls.clone().narrow(0, c * batch, batch)))
        .reduce(|a, b| a + b)
        .expect("two global crops");
    let ibot_term = match (t_patch_out, s_patch_out) {
        (Some(t_patch_out), Some(s_patch_out)) => {
            let targets = match objective.centering {
                Centering::Mean => {
                    let q = ibot.softmax_center_teacher(t_patch_out.clone(), teacher_temp);
                    ibot.update_center(t_patch_out);
                    q
                }
                Centering::Sinkhorn => {
                    sinkhorn_knopp(t_patch_out, teacher_temp, SINKHORN_ITERATIONS)
                }
            };
            ibot.forward_masked(s_patch_out, targets, &masks.weights, rows_g)
        }
        // No patch was masked this step (tiny crops): the official buffers would be empty and
        // its centre update NaN; the term is 0 and the centre stays.
        _ => Tensor::zeros([1], &ad_device),
    };
    let mut total = dino.clone().mul_scalar(objective.dino_weight)
        + koleo.clone().mul_scalar(objective.koleo_weight)
        + ibot_term.clone().mul_scalar(objective.ibot_weight);
    let mut terms = vec![
        ("dino_loss", dino),
        ("ibot_loss", ibot_term),
        ("koleo_loss", koleo),
    ];
    if let (Some(gram_teacher), Some((crops, weight)), Some(settings)) =
        (gram_teacher, gram, objective.gram.as_ref())
    {
        // The Gram teacher on its (larger) crops, its patch grid resized to the student's.
        let crops = crops.unwrap_or(teacher_globals);
        let g_tokens = gram_teacher.forward_tokens(crops, None);
        let g_patches = g_tokens.dims()[1] - prefix;
        let g_patches = g_tokens.narrow(1, prefix, g_patches);
        let grid = (patches as f64).sqrt().round() as usize;
        let target = Tensor::<3>::from_inner(resize_patch_grid(g_patches, grid, device));
        let term = gram_loss(s_patches, target, settings.image_level, settings.negatives);
        total = total + term.clone().mul_scalar(weight);
        terms.push(("gram_loss", term));
    }
    Losses {
        total,
        terms,
        stats,
    }
}

fn head(model: &DinoModel) -> &dino_model::DinoHead {
    model.head.as_ref().expect("training models have a head")
}
