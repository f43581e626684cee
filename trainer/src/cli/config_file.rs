//! `dino train --config FILE [KEY=VALUE …]`: a run's settings from a file, as DINOv2's and
//! DINOv3's `train.py --config-file FILE key=value …` take them.
//!
//! Two kinds of file are read:
//! - a complete configuration: the `config.json` of any run (version 2 or the flat version 1),
//!   which then starts a new run with exactly those settings;
//! - a settings file, YAML (`.yaml`, `.yml`; JSON is YAML too) or TOML (`.toml`), holding any
//!   subset of `config.json`'s keys in their sections (`schedule: {lr: 0.001}`) or the official
//!   DINOv2/DINOv3 keys where our runs have the setting (`optim.base_lr`, `ibot.loss_weight`,
//!   `crops.global_crops_scale`, …, see [`official`]), applied over the method's defaults.
//!
//! `KEY=VALUE` overrides (the value in YAML syntax: `0.001`, `true`, `[0.3, 1.0]`) come after
//! the file, and flags after both. A key nobody knows is an error that names it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use crate::loss::objective::Method;
use crate::train::config::{GivenFlag, TrainConfig};

/// One setting: a dotted key, its value, and where it was given (for messages).
#[derive(Debug, Clone)]
pub struct Setting {
    /// `schedule.lr`, `ibot.loss_weight`, …
    pub key: String,
    /// The value as the file or the command line wrote it.
    pub value: Value,
    /// The file, or `the command line`.
    pub origin: String,
}

/// What a config file and `KEY=VALUE` overrides amount to.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A complete configuration, when the file was one.
    pub complete: Option<TrainConfig>,
    /// The settings to apply, in order.
    pub settings: Vec<Setting>,
}

/// Reads `file` (when given) and parses `overrides`.
pub fn read(file: Option<&Path>, overrides: &[String]) -> Result<Settings> {
    let mut out = Settings {
        complete: None,
        settings: Vec::new(),
    };
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --config {}", path.display()))?;
        let value = parse_file(path, &text)?;
        let origin = path.display().to_string();
        let is_complete = value
            .as_object()
            .is_some_and(|m| m.contains_key("version") || m.contains_key("arch"));
        if is_complete {
            let cfg = TrainConfig::from_json(&value.to_string()).with_context(|| {
                format!("{origin} looks like a run's config.json but does not read as one")
            })?;
            out.complete = Some(cfg);
        } else {
            let mut leaves = Vec::new();
            flatten("", &value, &mut leaves).with_context(|| format!("reading {origin}"))?;
            out.settings
                .extend(leaves.into_iter().map(|(key, value)| Setting {
                    key,
                    value,
                    origin: origin.clone(),
                }));
        }
    }
    for o in overrides {
        let Some((key, text)) = o.split_once('=') else {
            bail!("`{o}` is not a KEY=VALUE setting (e.g. schedule.lr=0.001)");
        };
        let value: Value = serde_yaml_ng::from_str(text)
            .with_context(|| format!("`{o}`: the value is not YAML"))?;
        out.settings.push(Setting {
            key: key.trim().to_string(),
            value,
            origin: "the command line".into(),
        });
    }
    Ok(out)
}

/// The file's content as one JSON tree, by its extension.
fn parse_file(path: &Path, text: &str) -> Result<Value> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let value: Value = match ext.as_str() {
        "toml" => {
            let v: toml::Value = toml::from_str(text)
                .with_context(|| format!("{} is not valid TOML", path.display()))?;
            serde_json::to_value(v)?
        }
        "yaml" | "yml" | "json" => serde_yaml_ng::from_str(text)
            .with_context(|| format!("{} is not valid YAML", path.display()))?,
        other => bail!(
            "--config {}: unknown extension `{other}`; give a .yaml, .yml, .toml or .json file",
            path.display()
        ),
    };
    if !value.is_object() {
        bail!(
            "{} holds no settings (expected sections such as `schedule:` or keys such as `optim.base_lr`)",
            path.display()
        );
    }
    Ok(value)
}

/// The leaves of a tree as dotted keys; a key may itself be dotted (`optim.lr: 0.001`).
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) -> Result<()> {
    match value {
        Value::Object(m) if !m.is_empty() || prefix.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out)?;
            }
        }
        _ => out.push((prefix.to_string(), value.clone())),
    }
    Ok(())
}

/// What an official DINOv2/DINOv3 key means here.
#[derive(Debug, Clone, Copy)]
pub enum Official {
    /// The same setting under our key.
    To(&'static str),
    /// Our key, with the value translated (`None`: the value sets nothing).
    Translated(&'static str, fn(&Value) -> Result<Option<Value>>),
    /// Accepted when it equals our key's value (both heads have one size here).
    Equal(&'static str),
    /// A setting whose only value here is this one (what our runs always do).
    Fixed(&'static str),
    /// Set with this flag instead; accepted when empty.
    UseFlag(&'static str),
    /// Housekeeping that does not change what is trained (paths, logging, evaluation
    /// periods, cluster settings): ignored, with a warning.
    Ignored,
}

/// The official key `key` of DINOv2's and DINOv3's `ssl_default_config.yaml`, when it is one.
pub fn official(key: &str) -> Option<Official> {
    use Official::*;
    let ignored_sections = [
        "MODEL.",
        "compute_precision.",
        "evaluation.",
        "checkpointing.",
        "distillation.",
        "multidistillation.",
        "hrft.",
        "hydra.",
    ];
    if ignored_sections.iter().any(|s| key.starts_with(s)) {
        return Some(Ignored);
    }
    Some(match key {
        "dino.loss_weight" => To("objective.dinov2.dino_weight"),
        "dino.koleo_loss_weight" => To("objective.dinov2.koleo_weight"),
        "dino.head_n_prototypes" => To("model.out_dim"),
        "dino.head_bottleneck_dim" => To("model.head_bottleneck_dim"),
        "dino.head_hidden_dim" => To("model.head_hidden_dim"),
        "dino.head_norm_last_layer" => To("model.norm_last_layer"),
        "dino.head_nlayers" | "ibot.head_nlayers" => Fixed("3"),
        "dino.koleo_loss_distributed" | "dino.reweight_dino_local_loss" => Fixed("false"),
        "dino.global_ignore_diagonal" => Fixed("true"),
        "ibot.loss_weight" => To("objective.dinov2.ibot_weight"),
        "ibot.mask_sample_probability" => To("objective.dinov2.mask.probability"),
        "ibot.mask_ratio_min_max" => To("objective.dinov2.mask.ratio"),
        "ibot.separate_head" => To("model.ibot_separate_head"),
        // One head size for both heads, as in both official default configs.
        "ibot.head_n_prototypes" => Equal("model.out_dim"),
        "ibot.head_bottleneck_dim" => Equal("model.head_bottleneck_dim"),
        "ibot.head_hidden_dim" => Equal("model.head_hidden_dim"),
        "ibot.head_norm_last_layer" => Equal("model.norm_last_layer"),
        "ibot.mask_random_circular_shift" | "ibot.force_masking_even_with_zero_weight" => {
            Fixed("false")
        }
        "gram.use_loss" => Fixed("true"),
        "gram.loss_weight" => To("objective.dinov2.gram.weight"),
        "gram.it_load_ema_teacher" => Translated("objective.dinov2.gram.from_step", step),
        "gram.update_frequency" => Translated("objective.dinov2.gram.refresh_every", step),
        "gram.max_updates" => Translated("objective.dinov2.gram.max_refreshes", count),
        "gram.img_level" => To("objective.dinov2.gram.image_level"),
        "gram.remove_neg" => Translated("objective.dinov2.gram.negatives", remove_neg),
        "gram.remove_only_teacher_neg" => {
            Translated("objective.dinov2.gram.negatives", remove_only_teacher_neg)
        }
        "gram.ema_teacher" => Fixed("false"),
        "gram.rep_update" | "gram.normalized" => Fixed("true"),
        "gram.tokens_used" => Fixed("all"),
        "gram.global_teacher_resize_method" => Fixed("bicubic"),
        "gram.global_teacher_resize_antialias" => Fixed("false"),
        "gram.compute_stats" => Ignored,
        "train.batch_size_per_gpu" => To("data.batch_size"),
        "train.dataset_path" => To("data.source"),
        "train.seed" => To("run.seed"),
        "train.centering" => Translated("objective.dinov2.centering", centering),
        "train.output_dir"
        | "train.saveckp_freq"
        | "train.num_workers"
        | "train.cache_dataset"
        | "train.compile"
        | "train.cudagraphs"
        | "train.checkpointing"
        | "train.checkpointing_full"
        | "train.monitor_gradient_norm"
        | "train.fsdp_reshard_after_forward"
        | "train.sharded_eval_checkpoint" => Ignored,
        "student.arch" => To("model.arch"),
        "student.patch_size" => To("model.patch_size"),
        "student.drop_path_rate" => To("model.drop_path_rate"),
        "student.layerscale" => To("model.layer_scale"),
        "student.num_register_tokens" | "student.n_storage_tokens" => To("model.registers"),
        "student.drop_path_uniform"
        | "student.qkv_bias"
        | "student.proj_bias"
        | "student.ffn_bias" => Fixed("true"),
        "student.ffn_layer" => Fixed("mlp"),
        "student.block_chunks" => Ignored,
        "student.pretrained_weights" => UseFlag("--init FILE"),
        "teacher.momentum_teacher" => To("schedule.momentum_teacher"),
        "teacher.final_momentum_teacher" => Fixed("1"),
        "teacher.warmup_teacher_temp" => To("schedule.warmup_teacher_temp"),
        "teacher.teacher_temp" => To("schedule.teacher_temp"),
        "teacher.warmup_teacher_temp_epochs" => To("schedule.warmup_teacher_temp_epochs"),
        "optim.epochs" => To("schedule.epochs"),
        "optim.weight_decay" => To("schedule.weight_decay"),
        "optim.weight_decay_end" => To("schedule.weight_decay_end"),
        "optim.base_lr" => To("schedule.lr"),
        // DINOv3's base rate; DINOv2's placeholder `lr: 0.` (set from base_lr) is no setting.
        "optim.lr" => Translated("schedule.lr", base_rate_or_placeholder),
        "optim.warmup_epochs" => To("schedule.warmup_epochs"),
        "optim.min_lr" => To("schedule.min_lr"),
        "optim.freeze_last_layer_epochs" => To("schedule.freeze_last_layer"),
        "optim.layerwise_decay" => To("optim.dinov2.layer_decay"),
        "optim.scaling_rule" => Fixed("sqrt_wrt_1024"),
        "optim.adamw_beta1" => Fixed("0.9"),
        "optim.adamw_beta2" => Fixed("0.999"),
        "optim.schedule_trunc_extra" => Fixed("0.0"),
        "optim.dino_head_wd_multiplier" => Fixed("1.0"),
        "optim.multi_tensor_optim" | "optim.dump_fsdp_weights_path" => Ignored,
        "crops.global_crops_scale" => To("data.crops.global_scale"),
        "crops.local_crops_number" => To("data.crops.local_crops"),
        "crops.local_crops_scale" => To("data.crops.local_scale"),
        "crops.global_crops_size" => To("data.crops.global_size"),
        "crops.local_crops_size" => To("data.crops.local_size"),
        "crops.gram_teacher_crops_size" => To("objective.dinov2.gram.size"),
        "crops.horizontal_flips" => Fixed("true"),
        "crops.share_color_jitter" | "crops.localcrops_subset_of_globalcrops" => Fixed("false"),
        _ => return None,
    })
}

/// A step count of the official schedule (`-1`: never, which has no meaning here).
fn step(v: &Value) -> Result<Option<Value>> {
    match v.as_i64() {
        Some(s) if s >= 0 => Ok(Some(v.clone())),
        _ => bail!("give a step count of 0 or more"),
    }
}

/// A number of refreshes (`null`: unlimited, which has no meaning here).
fn count(v: &Value) -> Result<Option<Value>> {
    match v.as_u64() {
        Some(_) => Ok(Some(v.clone())),
        None => bail!("give a number of refreshes (unlimited is not supported)"),
    }
}

/// One of the two official booleans behind `GramNegatives`: `true` selects it.
fn negatives(v: &Value, variant: &str) -> Result<Option<Value>> {
    match v.as_bool() {
        Some(on) => Ok(on.then(|| Value::from(variant))),
        None => bail!("give true or false"),
    }
}

fn remove_neg(v: &Value) -> Result<Option<Value>> {
    negatives(v, "remove_neg")
}

fn remove_only_teacher_neg(v: &Value) -> Result<Option<Value>> {
    negatives(v, "remove_only_teacher_neg")
}

/// `centering` / `sinkhorn_knopp` as ours (`mean` / `sinkhorn`).
fn centering(v: &Value) -> Result<Option<Value>> {
    let s = v.as_str().unwrap_or_default();
    let c = crate::loss::objective::Centering::parse(s).map_err(anyhow::Error::msg)?;
    Ok(Some(serde_json::to_value(c)?))
}

/// DINOv3's `optim.lr` is its base rate; DINOv2's `lr: 0.` is a placeholder its code fills in
/// from `base_lr`, no setting.
fn base_rate_or_placeholder(v: &Value) -> Result<Option<Value>> {
    Ok((v.as_f64() != Some(0.0)).then(|| v.clone()))
}

/// The method a new run trains: the `--method` flag, else the settings' `objective.method`,
/// else DINO.
pub fn method(flag: Option<Method>, settings: &Settings) -> Result<Method> {
    if let Some(m) = flag {
        return Ok(m);
    }
    if let Some(cfg) = &settings.complete {
        return Ok(cfg.method());
    }
    match settings
        .settings
        .iter()
        .rev()
        .find(|s| s.key == "objective.method")
    {
        Some(s) => serde_json::from_value(s.value.clone()).with_context(|| {
            format!(
                "{}: objective.method {} is not dino, dinov2 or dinov3",
                s.origin, s.value
            )
        }),
        None => Ok(Method::Dino),
    }
}

/// Applies `settings` to `base`, in order; returns the result and, for the backbone's shape
/// (which `--init` compares with its file), what was given.
pub fn apply(base: TrainConfig, settings: &[Setting]) -> Result<(TrainConfig, Vec<GivenFlag>)> {
    let mut tree = serde_json::to_value(&base)?;
    let mut ignored = Vec::new();
    let mut given_keys = Vec::new();
    for s in settings {
        let (key, value) = match official(&s.key) {
            Some(Official::To(ours)) => (ours, s.value.clone()),
            Some(Official::Translated(ours, f)) => {
                let translated =
                    f(&s.value).with_context(|| format!("{}: {} {}", s.origin, s.key, s.value))?;
                let Some(v) = translated else { continue };
                (ours, v)
            }
            Some(Official::Equal(ours)) => {
                let dino = lookup(&tree, ours).cloned().unwrap_or(Value::Null);
                if !same_number(&dino, &s.value) {
                    bail!(
                        "{}: {} {} differs from the DINO head's {ours} {dino}; both heads have one size here (as in the official default configs)",
                        s.origin,
                        s.key,
                        s.value
                    );
                }
                continue;
            }
            Some(Official::Fixed(only)) => {
                let only_value: Value = serde_yaml_ng::from_str(only)?;
                if !same_number(&only_value, &s.value) {
                    bail!(
                        "{}: {} {} is not supported; only {only} is (what dinoscope's runs always do)",
                        s.origin,
                        s.key,
                        s.value
                    );
                }
                continue;
            }
            Some(Official::UseFlag(flag)) => {
                let empty = s.value.is_null() || s.value.as_str() == Some("");
                if !empty {
                    bail!("{}: {} {}: give it with {flag}", s.origin, s.key, s.value);
                }
                continue;
            }
            Some(Official::Ignored) => {
                ignored.push(s.key.clone());
                continue;
            }
            None if s.key == "objective.method" => {
                let m: Method = serde_json::from_value(s.value.clone())
                    .with_context(|| format!("{}: objective.method {}", s.origin, s.value))?;
                if m != base.method() {
                    bail!(
                        "{}: objective.method {} contradicts --method {}; drop one",
                        s.origin,
                        s.value,
                        format!("{:?}", base.method()).to_lowercase()
                    );
                }
                continue;
            }
            None => (s.key.as_str(), s.value.clone()),
        };
        set(&mut tree, key, value.clone(), base.method())
            .with_context(|| format!("{}: {}", s.origin, describe(s, key)))?;
        // Each value is checked as it is set, so that an error names its key.
        serde_json::from_value::<TrainConfig>(tree.clone())
            .with_context(|| format!("{}: {}", s.origin, describe(s, key)))?;
        given_keys.push(key.to_string());
    }
    if !ignored.is_empty() {
        log::warn!(
            "ignored {} official key{} that do not change what is trained here: {}",
            ignored.len(),
            if ignored.len() == 1 { "" } else { "s" },
            ignored.join(", ")
        );
    }
    let cfg: TrainConfig = serde_json::from_value(tree)?;
    let given = backbone_given(&base, &cfg, &given_keys);
    Ok((cfg, given))
}

/// `KEY VALUE`, and the key it became when it was an official one.
fn describe(s: &Setting, ours: &str) -> String {
    if s.key == ours {
        format!("{} {}", s.key, s.value)
    } else {
        format!("{} {} (here {ours})", s.key, s.value)
    }
}

/// Whether two values are equal, numbers compared as numbers (`1` and `1.0`).
fn same_number(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The value at a dotted key.
fn lookup<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(tree, |v, part| v.get(part))
}

/// Sets a dotted key of the config tree, refusing a key the config does not have.
fn set(tree: &mut Value, key: &str, value: Value, method: Method) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, parents) = parts.split_last().expect("split gives one part at least");
    let mut node = tree;
    let mut path = String::new();
    for part in parents {
        let obj = node.as_object_mut().expect("walked only into objects");
        let section = if path.is_empty() {
            part.to_string()
        } else {
            format!("{path}.{part}")
        };
        // The method's own sections are absent (or null) in the other methods' configs.
        let absent = obj.get(*part).is_none_or(Value::is_null);
        if absent && matches!(section.as_str(), "objective.dinov2" | "optim.dinov2") {
            bail!(
                "`{key}` applies to method dinov2 or dinov3, and this is a {} run; set objective.method (or --method)",
                format!("{method:?}").to_lowercase()
            );
        }
        if absent && section == "objective.dinov2.gram" {
            bail!("`{key}` applies to method dinov3 (Gram anchoring) only");
        }
        match obj.get(*part) {
            None => bail!("unknown key `{key}`: {}", known_here(obj, &path)),
            Some(v) if !v.is_object() => {
                bail!("unknown key `{key}`: `{section}` is a value, not a section")
            }
            Some(_) => {}
        }
        path = section;
        node = obj.get_mut(*part).expect("checked above");
    }
    let obj = node.as_object_mut().expect("walked only into objects");
    if !obj.contains_key(*last) {
        bail!("unknown key `{key}`: {}", known_here(obj, &path));
    }
    obj.insert(last.to_string(), value);
    Ok(())
}

/// What a section holds, for the message about a key it lacks.
fn known_here(obj: &Map<String, Value>, section: &str) -> String {
    let names: Vec<&str> = obj.keys().map(String::as_str).collect();
    let place = if section.is_empty() {
        "the top level has".to_string()
    } else {
        format!("`{section}` has")
    };
    format!(
        "{place} {} (official DINOv2/DINOv3 keys are read too where our runs have the setting)",
        names.join(", ")
    )
}

/// The backbone settings given through keys, in the form `--init`'s check compares.
fn backbone_given(before: &TrainConfig, cfg: &TrainConfig, keys: &[String]) -> Vec<GivenFlag> {
    let (b, m) = (&before.model, &cfg.model);
    let all: [(&str, &'static str, String, String); 5] = [
        (
            "model.arch",
            "arch",
            format!("{:?}", m.arch),
            format!("{:?}", b.arch),
        ),
        (
            "model.patch_size",
            "patch_size",
            format!("{:?}", m.patch_size),
            format!("{:?}", b.patch_size),
        ),
        (
            "model.depth",
            "depth",
            format!("{:?}", m.depth),
            format!("{:?}", b.depth),
        ),
        (
            "model.registers",
            "registers",
            format!("{:?}", m.registers),
            format!("{:?}", b.registers),
        ),
        (
            "model.layer_scale",
            "layerscale",
            format!("{:?}", m.layer_scale),
            format!("{:?}", b.layer_scale),
        ),
    ];
    all.into_iter()
        .filter(|(key, ..)| keys.iter().any(|k| k == key))
        .map(|(_, name, new, old)| (name, new, old))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, Value)]) -> Vec<Setting> {
        pairs
            .iter()
            .map(|(k, v)| Setting {
                key: k.to_string(),
                value: v.clone(),
                origin: "test".into(),
            })
            .collect()
    }

    #[test]
    fn our_keys_and_official_keys_set_the_same_fields() {
        let base = TrainConfig::for_method(Method::Dinov2);
        let (ours, _) = apply(
            base.clone(),
            &settings(&[
                ("schedule.lr", 0.002.into()),
                ("objective.dinov2.koleo_weight", 0.0.into()),
                ("data.crops.global_scale", serde_json::json!([0.3, 1.0])),
                ("objective.dinov2.centering", "sinkhorn".into()),
                ("optim.dinov2.layer_decay", 1.0.into()),
            ]),
        )
        .unwrap();
        let (official, _) = apply(
            base.clone(),
            &settings(&[
                ("optim.base_lr", 0.002.into()),
                ("dino.koleo_loss_weight", 0.0.into()),
                ("crops.global_crops_scale", serde_json::json!([0.3, 1.0])),
                ("train.centering", "sinkhorn_knopp".into()),
                ("optim.layerwise_decay", 1.0.into()),
                // Placeholders and fixed values of the official file pass.
                ("optim.lr", 0.0.into()),
                ("optim.scaling_rule", "sqrt_wrt_1024".into()),
                ("dino.head_nlayers", 3.into()),
                ("ibot.head_n_prototypes", 65536.into()),
                ("evaluation.eval_period_iterations", 12500.into()),
            ]),
        )
        .unwrap();
        assert_eq!(ours, official);
        assert_eq!(ours.schedule.lr, 0.002);
        assert_ne!(ours, base);
    }

    #[test]
    fn unknown_keys_unsupported_values_and_wrong_methods_are_named() {
        let err = |base: TrainConfig, key: &str, v: Value| {
            format!("{:#}", apply(base, &settings(&[(key, v)])).unwrap_err())
        };
        let dino = TrainConfig::default();
        let e = err(dino.clone(), "schedule.lrr", 0.1.into());
        assert!(
            e.contains("unknown key `schedule.lrr`") && e.contains("min_lr"),
            "{e}"
        );
        let e = err(dino.clone(), "nonsense.key", 1.into());
        assert!(e.contains("unknown key `nonsense.key`"), "{e}");
        let e = err(dino.clone(), "ibot.loss_weight", 1.0.into());
        assert!(e.contains("applies to method dinov2 or dinov3"), "{e}");
        let e = err(dino.clone(), "schedule.lr", "fast".into());
        assert!(
            e.contains("schedule.lr") && e.contains("invalid type"),
            "{e}"
        );
        let e = err(dino.clone(), "optim.adamw_beta1", 0.8.into());
        assert!(e.contains("only 0.9"), "{e}");
        let v2 = TrainConfig::for_method(Method::Dinov2);
        let e = err(v2.clone(), "gram.loss_weight", 1.0.into());
        assert!(e.contains("dinov3"), "{e}");
        let e = err(v2, "ibot.head_n_prototypes", 1024.into());
        assert!(e.contains("one size"), "{e}");
    }

    #[test]
    fn files_flatten_nested_and_dotted_keys_and_overrides_parse_as_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("run.yaml");
        std::fs::write(
            &yaml,
            "objective:\n  method: dinov2\nschedule: {lr: 0.003}\noptim.clip_grad: 1.0\n",
        )
        .unwrap();
        let s = read(
            Some(&yaml),
            &[
                "data.crops.local_scale=[0.1, 0.3]".into(),
                "run.seed=7".into(),
            ],
        )
        .unwrap();
        assert_eq!(method(None, &s).unwrap(), Method::Dinov2);
        let (cfg, _) = apply(TrainConfig::for_method(Method::Dinov2), &s.settings).unwrap();
        assert_eq!(cfg.schedule.lr, 0.003);
        assert_eq!(cfg.optim.clip_grad, 1.0);
        assert_eq!(cfg.data.crops.local_scale, (0.1, 0.3));
        assert_eq!(cfg.run.seed, 7);
        let toml = dir.path().join("run.toml");
        std::fs::write(&toml, "[schedule]\nlr = 0.003\n").unwrap();
        let s = read(Some(&toml), &[]).unwrap();
        assert_eq!(
            apply(TrainConfig::default(), &s.settings)
                .unwrap()
                .0
                .schedule
                .lr,
            0.003
        );
        assert!(read(None, &["schedule.lr".into()]).is_err());
        let json = dir.path().join("config.json");
        let saved = TrainConfig::for_method(Method::Dinov3);
        std::fs::write(&json, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
        assert_eq!(read(Some(&json), &[]).unwrap().complete, Some(saved));
    }
}
