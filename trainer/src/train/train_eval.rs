//! Evaluation during training: the held-out scenes' attention Jaccard (best head and
//! head-mean mask), k-NN accuracy and attention pictures, at step 0 and then periodically.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use burn::tensor::Device;
use dino_model::DinoModel;

use super::config::TrainConfig;
use super::run_dir::RunDir;
use crate::data::sources::{self as data, Source};

/// Images with their class labels.
type Labelled = (Vec<image::RgbImage>, Vec<usize>);

/// The images of the periodic evaluation: held-out synthetic scenes (and a second set for
/// the k-NN memory bank) when training on the synthetic set, else `--eval-data` or the
/// training data itself, split into a k-NN bank and queries.
pub struct EvalSet {
    /// Where the pictures, masks and queries come from.
    source: Arc<dyn Source>,
    /// k-NN memory bank: a separate set, or every sample of `source` not used as a query.
    bank: Option<Arc<dyn Source>>,
}

impl EvalSet {
    /// Chooses the evaluation data of a run.
    pub fn new(
        cfg: &TrainConfig,
        eval_data: Option<&str>,
        training: Arc<dyn Source>,
    ) -> Result<Self> {
        let held_out = |seed: u64, count: usize| -> Arc<dyn Source> {
            Arc::new(data::Synthetic {
                seed,
                count,
                size: cfg.data.synthetic_size,
            })
        };
        Ok(match eval_data {
            Some(spec) => Self {
                source: Arc::from(
                    data::open(
                        spec,
                        64,
                        cfg.data.synthetic_size,
                        cfg.run.seed ^ 0x5EED_0FF5E7,
                    )
                    .with_context(|| format!("opening --eval-data {spec}"))?,
                ),
                bank: None,
            },
            // A seed no training set uses.
            None if cfg.data.source == "synthetic" => Self {
                source: held_out(cfg.run.seed ^ 0x5EED_0FF5E7, 64),
                bank: Some(held_out(cfg.run.seed ^ 0xA11CE, 240)),
            },
            None => Self {
                source: training,
                bank: None,
            },
        })
    }

    /// Up to `n` evenly spread indices of the source.
    fn spread(&self, n: usize) -> Vec<usize> {
        let len = self.source.len();
        let n = n.min(len);
        (0..n).map(|i| i * len / n.max(1)).collect()
    }

    /// The k-NN memory bank and queries, when the data is labelled.
    fn knn_sets(&self) -> Option<(Labelled, Labelled)> {
        // Unreadable samples are left out (training skips them too); unlabelled data has
        // no k-NN.
        let labelled = |src: &dyn Source, idx: &[usize]| -> Option<Labelled> {
            let mut out = (Vec::new(), Vec::new());
            for &i in idx {
                let Ok(s) = src.get(i) else { continue };
                out.0.push(s.image);
                out.1.push(s.label?);
            }
            (!out.0.is_empty()).then_some(out)
        };
        match &self.bank {
            Some(bank) => {
                let all: Vec<usize> = (0..bank.len()).collect();
                Some((
                    labelled(bank.as_ref(), &all)?,
                    labelled(self.source.as_ref(), &self.spread(64))?,
                ))
            }
            None => {
                // One sample in five is a query, the rest the memory bank.
                let idx = self.spread(320);
                let queries: Vec<usize> = idx.iter().step_by(5).copied().collect();
                let bank: Vec<usize> = idx
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| k % 5 != 0)
                    .map(|(_, &i)| i)
                    .collect();
                Some((
                    labelled(self.source.as_ref(), &bank)?,
                    labelled(self.source.as_ref(), &queries)?,
                ))
            }
        }
    }
}

/// Attention pictures of four fixed evaluation images, plus segmentation (where masks exist)
/// and k-NN (where labels exist) numbers, appended to `metrics.jsonl` as an `eval` record.
pub fn evaluate(
    teacher: &DinoModel,
    cfg: &TrainConfig,
    eval: &EvalSet,
    run: &RunDir,
    step: u64,
    device: &Device,
    metrics: &mut std::fs::File,
) -> Result<()> {
    let size = cfg.data.crops.global_size;
    let patch = cfg.model.patch_size;
    let mut tiles = Vec::new();
    for i in eval.spread(4) {
        let Ok(sample) = eval.source.get(i) else {
            continue;
        };
        let prepared = dino_model::preprocess::prepare(
            &sample.image,
            dino_model::preprocess::Resize::Square(size),
            patch,
        )?;
        let maps = crate::eval::render::compute_maps(
            &teacher.backbone,
            &prepared,
            teacher.backbone.depth() - 1,
            0.6,
            device,
        )?;
        let mean = dino_model::attention::mean_map(&maps.heads);
        tiles.push(prepared.display.clone());
        tiles.push(crate::eval::render::overlay(
            &prepared.display,
            &mean,
            maps.grid_h,
            maps.grid_w,
            patch,
            0.6,
            false,
        ));
        for h in &maps.heads {
            tiles.push(crate::eval::render::heatmap(
                h,
                maps.grid_h,
                maps.grid_w,
                patch,
            ));
        }
    }
    let cols = 2 + teacher.backbone.num_heads();
    let picture = crate::eval::render::grid(&tiles, cols);
    crate::eval::render::save_png(
        &picture,
        &run.attention().join(format!("step_{step:06}.png")),
    )?;
    crate::eval::render::save_png(&picture, &run.attention().join("latest.png"))?;
    let mut record = serde_json::json!({ "eval": step });
    let mut said = format!("eval at step {step}:");
    // Sources without masks give no segmentation numbers, unlabelled ones no k-NN.
    if let Ok(seg) = crate::eval::probes::segmentation(
        &teacher.backbone,
        eval.source.as_ref(),
        64,
        size,
        0.6,
        device,
    ) {
        record["jaccard_best_head"] = seg.best_head.into();
        record["jaccard_mean_heads"] = seg.mean_heads.into();
        record["jaccard_head_mean_map"] = seg.head_mean_map.into();
        said += &format!(
            " Jaccard best head {:.3}, mean {:.3} ({} images);",
            seg.best_head, seg.mean_heads, seg.images
        );
    }
    if let Some(((bank, bank_labels), (queries, query_labels))) = eval.knn_sets() {
        let classes = eval.source.classes().len().max(1);
        let fb =
            crate::eval::probes::features(&teacher.backbone, &bank, &bank_labels, size, device)?;
        let fq = crate::eval::probes::features(
            &teacher.backbone,
            &queries,
            &query_labels,
            size,
            device,
        )?;
        let knn =
            crate::eval::knn::classify(&fb, &fq, &[20.min(fb.len())], 0.07, classes, device)?[0];
        record["knn_top1"] = knn.top1.into();
        let chance = 100.0 / classes as f64;
        record["knn_chance"] = chance.into();
        said += &format!(" k-NN top-1 {:.1}% (chance {chance:.1}%)", knn.top1);
    }
    writeln!(metrics, "{record}")?;
    log::info!("{said}");
    Ok(())
}

/// One line comparing a run's last evaluation with its step-0 one (the random
/// initialisation) in `metrics.jsonl`'s text: what the run learned, as its own numbers show.
pub fn against_init(metrics: &str) -> Option<String> {
    let evals: Vec<serde_json::Value> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["eval"].is_u64())
        .collect();
    let init = evals.iter().find(|v| v["eval"].as_u64() == Some(0))?;
    let last = evals.last().filter(|v| v["eval"].as_u64() != Some(0))?;
    let step = last["eval"].as_u64()?;
    let mut parts = Vec::new();
    if let (Some(a), Some(b)) = (
        init["jaccard_best_head"].as_f64(),
        last["jaccard_best_head"].as_f64(),
    ) {
        parts.push(format!(
            "best head's mask Jaccard {a:.3} -> {b:.3} ({:.2}x)",
            b / a
        ));
    }
    if let (Some(a), Some(b), Some(chance)) = (
        init["knn_top1"].as_f64(),
        last["knn_top1"].as_f64(),
        last["knn_chance"].as_f64(),
    ) {
        parts.push(format!(
            "k-NN top-1 {a:.1}% -> {b:.1}% ({:.2}x chance, {chance:.1}%)",
            b / chance
        ));
    }
    (!parts.is_empty()).then(|| {
        format!(
            "held-out evaluation, random init (step 0) -> step {step}: {}",
            parts.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::against_init;

    #[test]
    fn the_last_evaluation_is_read_against_step_zero() {
        let text = r#"{"eval":0,"jaccard_best_head":0.2,"knn_top1":20.0,"knn_chance":16.666}
{"step":0,"loss":8.0}
{"eval":64,"jaccard_best_head":0.25,"knn_top1":25.0,"knn_chance":16.666}
{"eval":128,"jaccard_best_head":0.3,"knn_top1":40.0,"knn_chance":16.666}"#;
        let said = against_init(text).unwrap();
        assert!(said.contains("step 128"), "{said}");
        assert!(said.contains("0.200 -> 0.300 (1.50x)"), "{said}");
        assert!(
            said.contains("20.0% -> 40.0% (2.40x chance, 16.7%)"),
            "{said}"
        );
        // A resumed run's file without its step-0 evaluation, or with only it, says nothing.
        assert_eq!(
            against_init(&text.lines().skip(1).collect::<Vec<_>>().join("\n")),
            None
        );
        assert_eq!(against_init(text.lines().next().unwrap()), None);
    }
}
