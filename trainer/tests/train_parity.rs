//! The DINO training step against the official code.
//!
//! `tests/fixtures/train_*` were produced by `scripts/make_train_fixtures.py`, which runs the
//! body of the official `train_one_epoch` for 5 iterations (DINOLoss with teacher-temperature
//! warm-up, get_params_groups + AdamW, clip_gradients, cancel_gradients_last_layer, EMA
//! teacher). We replay the same crops through `dino_step` and compare.

mod common;

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use dino_model::checkpoint::read_safetensors;
use dino_model::import::{Which, import_bytes};
use dino_model::{Precision, RawTensor, TensorMap};
use dino_trainer::loss::dino::DinoLoss;
use dino_trainer::optim::amp::LossScaler;
use dino_trainer::optim::optimizer::{Optimizer, OptimizerKind, param_groups};
use dino_trainer::optim::schedule::{cosine_scheduler, teacher_temp_schedule};
use dino_trainer::train::networks::Networks;
use dino_trainer::train::step::{StepHyper, dino_step};
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn record() -> Value {
    serde_json::from_slice(&fixture("train_steps.json")).unwrap()
}

fn to4(t: &RawTensor, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn official(map: &TensorMap, prefix: &str) -> BTreeMap<String, RawTensor> {
    // Official MultiCropWrapper keys are backbone.X / head.Y; ours are X / head.Y.
    map.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix).map(|s| {
                (
                    s.strip_prefix("backbone.").unwrap_or(s).to_string(),
                    v.clone(),
                )
            })
        })
        .collect()
}

/// Replays the official 5 iterations through `dino_step` in `precision`; returns per step
/// (our loss, official loss, centre error, skipped) and the final worst weight error per
/// network.
#[allow(clippy::type_complexity)]
fn replay(
    precision: Precision,
    scale: f64,
    optimizer: OptimizerKind,
) -> (Vec<(f64, f64, f32, bool)>, Vec<(String, f32, String, f64)>) {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let imported = import_bytes(&fixture("train_initial.pth"), Which::Student).unwrap();
    let mc = imported.config.clone();
    let mut nets = Networks {
        student: mc
            .load(&imported.tensors, "", &ad)
            .unwrap()
            .with_precision(precision),
        teacher: mc
            .load(&imported.tensors, "", &device)
            .unwrap()
            .with_precision(precision),
        optim: Optimizer::new(optimizer),
        loss: DinoLoss::new(64, 0.1, 0.9),
        scaler: (precision == Precision::F16).then_some(LossScaler {
            scale,
            growth_tracker: 0,
        }),
        ibot: None,
        gram: None,
    };
    let (_, expected) = read_safetensors(&fixture("train_steps.safetensors")).unwrap();
    let rec = record();
    // SGD and LARS ran on the same crops and schedules with their own learning rates; their
    // losses, centres and final weights are in train_optimizers.*.
    let (prefix, reference, other_steps) = match optimizer {
        OptimizerKind::AdamW => (String::new(), expected.clone(), None),
        other => {
            let name = serde_json::to_value(other).unwrap();
            let name = name.as_str().unwrap().to_string();
            let (_, t) = read_safetensors(&fixture("train_optimizers.safetensors")).unwrap();
            let r: Value = serde_json::from_slice(&fixture("train_optimizers.json")).unwrap();
            (format!("{name}."), t, Some(r[&name].clone()))
        }
    };
    let mut steps = Vec::new();
    for (i, s) in rec["steps"].as_array().unwrap().iter().enumerate() {
        let own = other_steps.as_ref().map_or(s, |o| &o[i]);
        let hyper = StepHyper {
            lr: own["lr"].as_f64().unwrap(),
            weight_decay: s["wd"].as_f64().unwrap(),
            momentum: s["momentum"].as_f64().unwrap(),
            teacher_temp: s["teacher_temp"].as_f64().unwrap(),
            clip_grad: rec["config"]["clip_grad"].as_f64().unwrap(),
            freeze_last_layer: s["freeze_last_layer"].as_bool().unwrap(),
        };
        let globals = to4(&expected[&format!("step{i}.globals")], &ad);
        let locals = to4(&expected[&format!("step{i}.locals")], &ad);
        let out = dino_step(nets, globals, Some(locals), &[None, None], &hyper, &device);
        nets = out.nets;
        let want = own["loss"].as_f64().unwrap();
        let center_err = max_err(
            &nets.loss.center,
            &reference[&format!("{prefix}step{i}.center")].data,
        );
        println!(
            "{precision:?} {optimizer:?} step {i}: loss {:.7} official {want:.7} (diff {:.2e}), centre max abs error {center_err:.2e}{}",
            out.loss,
            (out.loss - want).abs(),
            if out.skipped { ", skipped" } else { "" }
        );
        steps.push((out.loss, want, center_err, out.skipped));
    }
    let mut worst_per_net = Vec::new();
    for (who, model) in [("student", &nets.student), ("teacher", &nets.teacher)] {
        let mut ours = TensorMap::new();
        model.save_tensors(&mut ours, "");
        let theirs = official(&reference, &format!("{prefix}final.{who}."));
        let mut worst = (0.0f32, String::new());
        // Cosine between our total update (final − initial) and the official one, over every
        // weight: rounding noise turns a few near-zero-gradient elements around under Adam, a
        // real error turns the whole update.
        let (mut dot, mut n_ours, mut n_theirs) = (0.0f64, 0.0f64, 0.0f64);
        for (name, t) in &theirs {
            let mine = ours
                .get(name)
                .unwrap_or_else(|| panic!("{who}: no tensor {name}"));
            // The key bias has an exactly zero gradient (a constant shift of every logit of a
            // query row), so Adam amplifies rounding noise there into lr-sized steps in both
            // implementations alike; compare the query and value thirds only.
            let e = if name.ends_with("attn.qkv.bias") {
                let d = t.data.len() / 3;
                max_err(&mine.data[..d], &t.data[..d])
                    .max(max_err(&mine.data[2 * d..], &t.data[2 * d..]))
            } else {
                max_err(&mine.data, &t.data)
            };
            if e > worst.0 {
                worst = (e, name.clone());
            }
            let initial = &imported.tensors[name].data;
            for ((m, o), i) in mine.data.iter().zip(&t.data).zip(initial) {
                let (a, b) = ((m - i) as f64, (o - i) as f64);
                dot += a * b;
                n_ours += a * a;
                n_theirs += b * b;
            }
        }
        let cosine = dot / (n_ours.sqrt() * n_theirs.sqrt());
        println!(
            "{precision:?} {optimizer:?} {who} after 5 steps: max abs weight error {:.2e} ({}), update cosine {cosine:.6}",
            worst.0, worst.1
        );
        worst_per_net.push((who.to_string(), worst.0, worst.1, cosine));
    }
    (steps, worst_per_net)
}

#[test]
fn five_official_iterations_are_reproduced() {
    let (steps, worst) = replay(Precision::F32, 1.0, OptimizerKind::AdamW);
    for (i, (loss, want, center_err, skipped)) in steps.into_iter().enumerate() {
        assert!(!skipped);
        // Within 1e-6 of the loss: a few f32 ulps, whatever the summation order.
        assert!(
            (loss - want).abs() < 1e-6 * want.abs(),
            "step {i}: loss {loss} vs {want}"
        );
        assert!(center_err < 1e-6, "step {i}: centre error {center_err}");
    }
    for (who, err, name, _) in worst {
        assert!(err < 1e-5, "{who}: {name} differs by {err}");
    }
}

#[test]
fn schedules_match_the_official_cosine_scheduler() {
    let rec = record();
    let sched = &rec["schedules"];
    let check = |ours: Vec<f64>, name: &str| {
        let theirs: Vec<f64> = sched[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{name} length");
        let err = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!("{name}: {} values, max abs error {err:.2e}", ours.len());
        assert!(err < 1e-12, "{name}: max error {err}");
    };
    check(
        cosine_scheduler(0.0005 * 64.0 / 256.0, 1e-6, 30, 7, 10, 0.0),
        "lr",
    );
    check(cosine_scheduler(0.04, 0.4, 30, 7, 0, 0.0), "wd");
    check(cosine_scheduler(0.996, 1.0, 30, 7, 0, 0.0), "momentum");
    check(teacher_temp_schedule(0.04, 0.07, 30, 100), "teacher_temp");
}

#[test]
fn parameter_groups_match_get_params_groups() {
    let imported = import_bytes(&fixture("train_initial.pth"), Which::Student).unwrap();
    let model = imported
        .config
        .load(&imported.tensors, "", &Device::flex().autodiff())
        .unwrap();
    let (reg, not_reg) = param_groups(&model);
    let rec = record();
    let names = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = rec[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(reg, names("regularized"));
    assert_eq!(not_reg, names("not_regularized"));
}

/// `--precision f16` on the same 5 official iterations: the official run is f32, so this
/// measures what mixed precision changes. The scale starts at 2¹⁰, where no gradient of this
/// fixture overflows, so every step is taken as in the reference.
#[test]
fn five_official_iterations_in_mixed_precision_stay_within_f16_rounding() {
    let (steps, worst) = replay(Precision::F16, 1024.0, OptimizerKind::AdamW);
    for (i, (loss, want, center_err, skipped)) in steps.into_iter().enumerate() {
        assert!(!skipped, "step {i} overflowed at scale 1024");
        // f16 keeps 11 significant bits: 2.5 × 2⁻¹¹ ≈ 1.2e-3 for a loss of 2.5.
        assert!(
            (loss - want).abs() < 2e-3,
            "step {i}: loss {loss} vs {want}"
        );
        assert!(center_err < 2e-4, "step {i}: centre error {center_err}");
    }
    let lr_sum: f64 = record()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["lr"].as_f64().unwrap())
        .sum();
    for (who, err, name, cosine) in worst {
        // Adam moves a weight by about lr per step whatever its gradient, so a near-zero
        // gradient whose sign rounding flips can differ by up to Σlr; the update as a whole
        // must point the same way.
        assert!((err as f64) < lr_sum, "{who}: {name} differs by {err}");
        assert!(cosine > 0.995, "{who}: update cosine {cosine}");
    }
}

/// At the default scale 2¹⁶ the summed weight gradients of this fixture overflow f16, as
/// they do in PyTorch: `GradScaler.step` skips the optimiser (weights and Adam state
/// untouched), `update` halves the scale, and the teacher's EMA still runs.
#[test]
fn an_overflowing_f16_step_is_skipped_and_the_scale_halved() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let imported = import_bytes(&fixture("train_initial.pth"), Which::Student).unwrap();
    let mc = imported.config.clone();
    let nets = Networks {
        student: mc
            .load(&imported.tensors, "", &ad)
            .unwrap()
            .with_precision(Precision::F16),
        teacher: mc
            .load(&imported.tensors, "", &device)
            .unwrap()
            .with_precision(Precision::F16),
        optim: Optimizer::new(OptimizerKind::AdamW),
        loss: DinoLoss::new(64, 0.1, 0.9),
        scaler: Some(LossScaler::default()),
        ibot: None,
        gram: None,
    };
    let (_, expected) = read_safetensors(&fixture("train_steps.safetensors")).unwrap();
    let hyper = StepHyper {
        lr: 0.003,
        weight_decay: 0.04,
        momentum: 0.9,
        teacher_temp: 0.04,
        clip_grad: 0.5,
        freeze_last_layer: false,
    };
    let out = dino_step(
        nets,
        to4(&expected["step0.globals"], &ad),
        Some(to4(&expected["step0.locals"], &ad)),
        &[None, None],
        &hyper,
        &device,
    );
    assert!(out.loss.is_finite() && out.skipped);
    let scaler = out.nets.scaler.unwrap();
    assert_eq!((scaler.scale, scaler.growth_tracker), (32768.0, 0));
    assert!(out.nets.optim.export().1.is_empty(), "Adam took no step");
    for model in [&out.nets.student, &out.nets.teacher] {
        let mut after = TensorMap::new();
        model.save_tensors(&mut after, "");
        for (name, t) in &after {
            let before = &imported.tensors[name].data;
            // The teacher is m·t + (1 − m)·s with s = t: unchanged up to rounding.
            assert!(max_err(&t.data, before) < 1e-6, "{name} changed");
        }
    }
}

/// `--optimizer sgd` and `--optimizer lars` against `torch.optim.SGD(momentum=0.9)` and the
/// official `utils.LARS`, on the same 5 iterations (learning rates ×10 and ×1000 so that the
/// updates dwarf rounding; LARS's trust ratio keeps its steps small).
#[test]
fn sgd_and_lars_match_the_official_optimizers() {
    for kind in [OptimizerKind::Sgd, OptimizerKind::Lars] {
        let (steps, worst) = replay(Precision::F32, 1.0, kind);
        for (i, (loss, want, center_err, _)) in steps.into_iter().enumerate() {
            assert!(
                (loss - want).abs() < 1e-5 * want.abs(),
                "{kind:?} step {i}: loss {loss} vs {want}"
            );
            assert!(
                center_err < 1e-5,
                "{kind:?} step {i}: centre error {center_err}"
            );
        }
        for (who, err, name, cosine) in worst {
            assert!(err < 1e-4, "{kind:?} {who}: {name} differs by {err}");
            assert!(cosine > 0.99999, "{kind:?} {who}: update cosine {cosine}");
        }
    }
}

/// `eval_linear.py` replayed (tests/fixtures/linear from scripts/make_linear_fixtures.py): the
/// same folder, teacher backbone, initial classifier, sampler order, crop boxes and flips;
/// every step's loss, each epoch's learning rate and validation numbers, and the final
/// weights match, for CLS tokens of two blocks (3 epochs) and for one block with the pooled
/// patch token (1 epoch).
#[test]
fn linear_probe_matches_eval_linear_py() {
    use dino_trainer::eval::knn::{EvalTransform, labels_of};
    use dino_trainer::eval::linear::{Classifier, Probe, ProbeInput, View, Views, cosine_lr};

    struct Replay(Vec<Vec<(usize, View)>>);
    impl Views for Replay {
        fn order(&self, epoch: usize, _n: usize) -> Vec<usize> {
            self.0[epoch].iter().map(|(i, _)| *i).collect()
        }
        fn view(&self, epoch: usize, index: usize, _w: u32, _h: u32) -> View {
            self.0[epoch].iter().find(|(i, _)| *i == index).unwrap().1
        }
    }

    let dir = tempfile::tempdir().unwrap();
    common::knn_fixture_folder(dir.path());
    let device = Device::flex();
    let weights = format!(
        "{}/tests/fixtures/train_initial.pth",
        env!("CARGO_MANIFEST_DIR")
    );
    let path = std::path::Path::new(&weights);
    let imported = dino_trainer::io::weights::load_weights(path, Default::default()).unwrap();
    let model = dino_trainer::io::weights::build_model(&imported, path, &device).unwrap();
    let open = |split: &str| {
        dino_trainer::data::sources::open(dir.path().join(split).to_str().unwrap(), 0, 0, 0)
            .unwrap()
    };
    let (train, val) = (open("train"), open("val"));
    let picks = |s: &dyn dino_trainer::data::sources::Source| -> Vec<(usize, usize)> {
        labels_of(s).unwrap().into_iter().enumerate().collect()
    };
    let (train_picks, val_picks) = (picks(train.as_ref()), picks(val.as_ref()));
    let val_labels: Vec<usize> = val_picks.iter().map(|p| p.1).collect();
    let log: Value = serde_json::from_slice(&fixture("linear/linear.json")).unwrap();
    let (_, tensors) = read_safetensors(&fixture("linear/linear.safetensors")).unwrap();
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
    for setting in ["blocks2", "avgpool"] {
        let s = &log[setting];
        let input = ProbeInput {
            n_last_blocks: s["n_last_blocks"].as_u64().unwrap() as usize,
            avgpool: s["avgpool"].as_bool().unwrap(),
        };
        let epochs = s["epochs"].as_u64().unwrap() as usize;
        let (batch, lr) = (
            s["batch"].as_u64().unwrap() as usize,
            s["lr"].as_f64().unwrap(),
        );
        let probe = Probe {
            backbone: &model.backbone,
            input,
            transform: EvalTransform::official(dino_model::Normalization::IMAGENET),
            batch,
            device: &device,
        };
        let width = input.width(&model.backbone);
        let w0 = &tensors[&format!("{setting}.initial_weight")];
        let b0 = &tensors[&format!("{setting}.initial_bias")];
        let mut classifiers = vec![Classifier::from_values(
            &w0.data, &b0.data, 6, width, lr, &device,
        )];
        let replay = Replay(
            s["epochs_log"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    e["views"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| {
                            let n = |k: &str| v[k].as_u64().unwrap() as u32;
                            (
                                v["index"].as_u64().unwrap() as usize,
                                (
                                    (n("top"), n("left"), n("height"), n("width")),
                                    v["flip"].as_bool().unwrap(),
                                ),
                            )
                        })
                        .collect()
                })
                .collect(),
        );
        let quiet = indicatif::ProgressBar::hidden();
        let val_inputs = probe.val_inputs(val.as_ref(), &val_picks, &quiet).unwrap();
        for (epoch, e) in s["epochs_log"].as_array().unwrap().iter().enumerate() {
            let want_lr = e["lr"].as_f64().unwrap();
            let got_lr = cosine_lr(lr * batch as f64 / 256.0, epoch, epochs);
            assert!(
                rel(got_lr, want_lr) < 1e-12,
                "{setting} epoch {epoch}: lr {got_lr} against {want_lr}"
            );
            let losses = probe
                .train_epoch(
                    train.as_ref(),
                    &train_picks,
                    6,
                    &mut classifiers,
                    &replay,
                    epoch,
                    epochs,
                    &quiet,
                )
                .unwrap();
            let want: Vec<f64> = e["losses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(losses[0].len(), want.len());
            for (step, (g, w)) in losses[0].iter().zip(&want).enumerate() {
                assert!(
                    rel(*g, *w) <= 1e-5,
                    "{setting} epoch {epoch} step {step}: loss {g} against eval_linear.py's {w}"
                );
            }
            let v = probe
                .validate(&val_inputs, &val_labels, 6, &classifiers[0])
                .unwrap();
            assert_eq!(
                v.acc1,
                e["val_acc1"].as_f64().unwrap(),
                "{setting} epoch {epoch}"
            );
            assert_eq!(v.acc5, e["val_acc5"].as_f64(), "{setting} epoch {epoch}");
            assert!(
                rel(v.loss, e["val_loss"].as_f64().unwrap()) <= 1e-5,
                "{setting} epoch {epoch}: {v:?}"
            );
        }
        let w: Vec<f32> = classifiers[0]
            .weight
            .clone()
            .into_data()
            .try_to_vec()
            .unwrap();
        let b: Vec<f32> = classifiers[0]
            .bias
            .clone()
            .into_data()
            .try_to_vec()
            .unwrap();
        let wf = &tensors[&format!("{setting}.final_weight")];
        let bf = &tensors[&format!("{setting}.final_bias")];
        assert!(
            max_err(&w, &wf.data) <= 1e-5,
            "{setting}: final weight off by {}",
            max_err(&w, &wf.data)
        );
        assert!(
            max_err(&b, &bf.data) <= 1e-5,
            "{setting}: final bias off by {}",
            max_err(&b, &bf.data)
        );
    }
}
