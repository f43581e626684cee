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

use crate::data::masking::{BatchMasks, MaskSampling};
use crate::loss::dino::{DinoLoss, TeacherStats};
use crate::loss::gram::{GramAnchoring, gram_loss, resize_patch_grid};
use crate::loss::ibot::IbotLoss;
use crate::loss::koleo::koleo_loss;
use crate::loss::sinkhorn::{SINKHORN_ITERATIONS, sinkhorn_knopp_world};

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

/// DINOv2's terms (`ssl_default_config.yaml`) and DINOv3's Gram anchoring, saved with the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
            gram: None,
        }
    }
}

impl Dinov2Objective {
    /// DINOv3's `ssl_default_config.yaml` with the gram-anchor recipe's Gram loss: Sinkhorn-Knopp
    /// centering (the only one its `SSLMetaArch` accepts).
    pub fn dinov3() -> Self {
        Self {
            centering: Centering::Sinkhorn,
            gram: Some(GramAnchoring::default()),
            ..Self::default()
        }
    }
}

/// The run's objective section (`objective` in `config.json`): the recipe, DINO's loss
/// settings, and DINOv2's and DINOv3's further terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// The training recipe (`--method`).
    pub method: Method,
    /// Student temperature.
    pub student_temp: f64,
    /// Centre EMA momentum.
    pub center_momentum: f64,
    /// DINOv2's (and DINOv3's) terms, present exactly when `method` is not `dino`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dinov2: Option<Dinov2Objective>,
}

impl ObjectiveConfig {
    /// The defaults of `method`: `main_dino.py`'s, DINOv2's or DINOv3's.
    pub fn for_method(method: Method) -> Self {
        Self {
            method,
            student_temp: 0.1,
            center_momentum: 0.9,
            dinov2: match method {
                Method::Dino => None,
                Method::Dinov2 => Some(Dinov2Objective::default()),
                Method::Dinov3 => Some(Dinov2Objective::dinov3()),
            },
        }
    }

    /// DINOv3's Gram anchoring, when this is a DINOv3 objective.
    pub fn gram(&self) -> Option<&GramAnchoring> {
        self.dinov2.as_ref().and_then(|o| o.gram.as_ref())
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

/// DINOv3's Gram term: the Gram teacher on its (larger) `crops`, its patch grid resized to
/// the student's, against the student's patch tokens `[2B, patches, D]`.
fn gram_term(
    gram_teacher: &VisionTransformer,
    crops: Tensor<4>,
    student_patches: Tensor<3>,
    settings: &GramAnchoring,
    device: &Device,
) -> Tensor<1> {
    let prefix = gram_teacher.prefix_tokens();
    let patches = student_patches.dims()[1];
    let g_tokens = gram_teacher.forward_tokens(crops, None);
    let g_patches = g_tokens.dims()[1] - prefix;
    let g_patches = g_tokens.narrow(1, prefix, g_patches);
    let grid = (patches as f64).sqrt().round() as usize;
    let target = Tensor::<3>::from_inner(resize_patch_grid(g_patches, grid, device));
    gram_loss(
        student_patches,
        target,
        settings.image_level,
        settings.negatives,
    )
}

/// iBOT's term on the masked patches: the teacher's outputs become targets (centred and
/// sharpened, updating the centre; or Sinkhorn-Knopp, both over every rank), the student's are
/// scored against them, each patch weighted by `weights`, the sum divided by the `rows` global
/// crops. `outputs` (teacher, student) is `None` when no patch of this rank was masked: the
/// term is then 0, and the rank still takes part in the reductions the others run.
fn ibot_masked_term(
    ibot: &mut IbotLoss,
    centering: Centering,
    outputs: Option<(Tensor<2>, Tensor<2>)>,
    (weights, rows): (&[f32], usize),
    teacher_temp: f64,
    device: &Device,
) -> Tensor<1> {
    let (teacher, student) = outputs.unzip();
    let targets = match centering {
        Centering::Mean => {
            let q = teacher
                .as_ref()
                .map(|t| ibot.softmax_center_teacher(t.clone(), teacher_temp));
            ibot.update_center(teacher);
            q
        }
        Centering::Sinkhorn => {
            let prototypes = ibot.center.len();
            sinkhorn_knopp_world(teacher, prototypes, teacher_temp, SINKHORN_ITERATIONS)
        }
    };
    match student.zip(targets) {
        Some((s, q)) => ibot.forward_masked(s, q, weights, rows),
        // No patch was masked (tiny crops): the official buffers would be empty and its
        // centre update NaN; the term is 0 and the centre stays.
        None => Tensor::zeros([1], device),
    }
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
            let prototypes = loss.center.len();
            let q = sinkhorn_knopp_world(
                Some(t_cls_out),
                prototypes,
                teacher_temp,
                SINKHORN_ITERATIONS,
            )
            .expect("every rank has CLS targets");
            loss.forward_with_targets(s_cls_out, q, ncrops)
        }
    };
    let dino = dino.reshape([1]);
    let koleo = (0..2)
        .map(|c| koleo_loss(s_cls.clone().narrow(0, c * batch, batch)))
        .reduce(|a, b| a + b)
        .expect("two global crops");
    let ibot_term = ibot_masked_term(
        ibot,
        objective.centering,
        t_patch_out.zip(s_patch_out),
        (&masks.weights, rows_g),
        teacher_temp,
        &ad_device,
    );
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
        let crops = crops.unwrap_or(teacher_globals);
        let term = gram_term(gram_teacher, crops, s_patches, settings, device);
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
