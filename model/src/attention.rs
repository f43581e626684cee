//! Attention post-processing: pure functions on plain vectors, shared by the `dino
//! attention` command and the viewer, following the official `visualize_attention.py`.

/// Refuses outputs with a NaN or an infinity (`what` names them): they come from absurd
/// weights, and a map drawn from them would show nothing true.
pub fn ensure_finite(values: &[f32], what: &str) -> crate::error::Result<()> {
    if values.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(crate::error::ModelError::NonFiniteOutput { what: what.into() })
    }
}

/// One query token's attention to every patch, one row-major `[grid_h, grid_w]` map per head.
///
/// `attention` is one image's `[heads, tokens, tokens]` softmax attention with `prefix`
/// tokens (CLS, then registers) before the patches; the prefix columns are skipped and the
/// rows are not renormalised, as in the official `visualize_attention.py`.
pub fn token_maps(
    attention: &[f32],
    heads: usize,
    tokens: usize,
    prefix: usize,
    row: usize,
) -> Vec<Vec<f32>> {
    assert_eq!(
        attention.len(),
        heads * tokens * tokens,
        "attention is not [heads, tokens, tokens]"
    );
    assert!(
        prefix >= 1 && prefix < tokens,
        "prefix {prefix} of {tokens} tokens"
    );
    assert!(row < tokens, "token {row} out of range");
    (0..heads)
        .map(|h| {
            let start = h * tokens * tokens + row * tokens;
            attention[start + prefix..start + tokens].to_vec()
        })
        .collect()
}

/// The CLS token's attention to every patch, one map per head (register columns skipped).
pub fn cls_maps(attention: &[f32], heads: usize, tokens: usize, prefix: usize) -> Vec<Vec<f32>> {
    token_maps(attention, heads, tokens, prefix, 0)
}

/// One patch's attention row (query `patch`, 0-based over patches) per head, CLS and
/// registers excluded: the viewer's patch-query mode.
pub fn patch_query_maps(
    attention: &[f32],
    heads: usize,
    tokens: usize,
    prefix: usize,
    patch: usize,
) -> Vec<Vec<f32>> {
    assert!(prefix + patch < tokens, "patch {patch} out of range");
    token_maps(attention, heads, tokens, prefix, prefix + patch)
}

/// Each register token's own attention to the patches, `[register][head]` maps: what the
/// registers paper (Darcet et al. 2024) compares with the CLS maps.
pub fn register_maps(
    attention: &[f32],
    heads: usize,
    tokens: usize,
    prefix: usize,
) -> Vec<Vec<Vec<f32>>> {
    (1..prefix)
        .map(|r| token_maps(attention, heads, tokens, prefix, r))
        .collect()
}

/// The official threshold mask: keeps the largest values that together hold at least
/// `mass` (default 0.6) of the map's total (`cumsum(sorted / sum) > 1 - mass`).
pub fn mass_mask(map: &[f32], mass: f32) -> Vec<bool> {
    let total: f64 = map.iter().map(|&v| v as f64).sum();
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&a, &b| map[a].total_cmp(&map[b]));
    let mut keep = vec![false; map.len()];
    if total <= 0.0 || !total.is_finite() {
        return keep;
    }
    let mut cum = 0.0f64;
    for &i in &order {
        cum += map[i] as f64 / total;
        keep[i] = cum > (1.0 - mass as f64);
    }
    keep
}

/// Mean of several equally sized maps (the head-mean map).
pub fn mean_map(maps: &[Vec<f32>]) -> Vec<f32> {
    let n = maps.len().max(1) as f32;
    let len = maps.first().map_or(0, Vec::len);
    (0..len)
        .map(|i| maps.iter().map(|m| m[i]).sum::<f32>() / n)
        .collect()
}

/// The combined segmentation: patches where at least `min_heads` heads' mass masks agree.
/// With `min_heads = 1` this is the union of the heads' masks.
pub fn combined_mask(masks: &[Vec<bool>], min_heads: usize) -> Vec<bool> {
    let len = masks.first().map_or(0, Vec::len);
    (0..len)
        .map(|i| masks.iter().filter(|m| m[i]).count() >= min_heads.max(1))
        .collect()
}

/// Nearest-neighbour upsampling by an integer factor (`interpolate(scale_factor=patch, mode="nearest")`).
pub fn upsample_nearest<T: Copy>(map: &[T], h: usize, w: usize, factor: usize) -> Vec<T> {
    let (oh, ow) = (h * factor, w * factor);
    let mut out = Vec::with_capacity(oh * ow);
    for y in 0..oh {
        for x in 0..ow {
            out.push(map[(y / factor) * w + x / factor]);
        }
    }
    out
}

/// Bilinear upsampling to any size (half-pixel centres), for smooth displays.
pub fn upsample_bilinear(map: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let rows = crate::interp::bilinear_matrix(h, out_h);
    let cols = crate::interp::bilinear_matrix(w, out_w);
    let mut tmp = vec![0.0f32; out_h * w];
    for oy in 0..out_h {
        for y in 0..h {
            let r = rows[oy * h + y];
            if r != 0.0 {
                for x in 0..w {
                    tmp[oy * w + x] += r * map[y * w + x];
                }
            }
        }
    }
    let mut out = vec![0.0f32; out_h * out_w];
    for oy in 0..out_h {
        for ox in 0..out_w {
            out[oy * out_w + ox] = (0..w).map(|x| cols[ox * w + x] * tmp[oy * w + x]).sum();
        }
    }
    out
}

/// Rescales a map to `[0, 1]` by its own min and max (the per-head normalisation of the
/// official heatmaps); a constant map becomes zeros.
pub fn normalize01(map: &[f32]) -> Vec<f32> {
    let (lo, hi) = map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = hi - lo;
    if !(range > 0.0) {
        return vec![0.0; map.len()];
    }
    map.iter().map(|&v| (v - lo) / range).collect()
}

/// Jaccard index (intersection over union) of two masks; two empty masks score 1.
pub fn jaccard(a: &[bool], b: &[bool]) -> f32 {
    assert_eq!(a.len(), b.len(), "masks differ in size");
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    if union == 0 {
        1.0
    } else {
        inter as f32 / union as f32
    }
}

/// The first three principal components of patch features mapped to RGB in `[0, 1]`.
///
/// `features` is row-major `[n, dim]` (one row per patch). Components come from power
/// iteration with deflation on the covariance; each is min-max scaled over the patches.
pub fn pca_rgb(features: &[f32], n: usize, dim: usize) -> Vec<[f32; 3]> {
    assert_eq!(features.len(), n * dim, "features are not [n, dim]");
    if n == 0 {
        return Vec::new();
    }
    let mut mean = vec![0.0f64; dim];
    for row in features.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64 / n as f64;
        }
    }
    let centered: Vec<f64> = features
        .chunks_exact(dim)
        .flat_map(|row| row.iter().zip(&mean).map(|(&v, m)| v as f64 - m))
        .collect();
    let mut cov = vec![0.0f64; dim * dim];
    for row in centered.chunks_exact(dim) {
        for i in 0..dim {
            let ri = row[i];
            if ri == 0.0 {
                continue;
            }
            for j in i..dim {
                cov[i * dim + j] += ri * row[j];
            }
        }
    }
    for i in 0..dim {
        for j in 0..i {
            cov[i * dim + j] = cov[j * dim + i];
        }
    }
    let mut components: Vec<Vec<f64>> = Vec::new();
    for c in 0..3.min(dim) {
        // A deterministic, non-degenerate start vector.
        let mut v: Vec<f64> = (0..dim)
            .map(|i| 1.0 + ((i * 7 + c * 13) % 11) as f64 / 11.0)
            .collect();
        for _ in 0..200 {
            let mut next = vec![0.0f64; dim];
            for i in 0..dim {
                next[i] = (0..dim).map(|j| cov[i * dim + j] * v[j]).sum();
            }
            for p in &components {
                let d: f64 = next.iter().zip(p).map(|(a, b)| a * b).sum();
                for (x, y) in next.iter_mut().zip(p) {
                    *x -= d * y;
                }
            }
            let norm = next.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm < 1e-20 {
                break;
            }
            v = next.into_iter().map(|x| x / norm).collect();
        }
        components.push(v);
    }
    let mut proj: Vec<Vec<f32>> = components
        .iter()
        .map(|p| {
            centered
                .chunks_exact(dim)
                .map(|row| row.iter().zip(p).map(|(a, b)| a * b).sum::<f64>() as f32)
                .collect()
        })
        .collect();
    while proj.len() < 3 {
        proj.push(vec![0.0; n]);
    }
    let scaled: Vec<Vec<f32>> = proj.iter().map(|p| normalize01(p)).collect();
    (0..n)
        .map(|i| [scaled[0][i], scaled[1][i], scaled[2][i]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mass_mask_keeps_the_top_mass() {
        // 0.5 + 0.3 = 0.8 >= 0.6: the two largest are kept, the rest are not.
        let map = [0.05, 0.5, 0.1, 0.3, 0.05];
        assert_eq!(mass_mask(&map, 0.6), vec![false, true, false, true, false]);
        // 0.5 alone holds 50 % >= 45 %: one patch suffices.
        assert_eq!(mass_mask(&map, 0.45).iter().filter(|&&b| b).count(), 1);
        assert!(mass_mask(&[0.0; 4], 0.6).iter().all(|&b| !b));
    }

    #[test]
    fn jaccard_on_hand_made_masks() {
        let a = [true, true, false, false];
        let b = [true, false, true, false];
        assert!((jaccard(&a, &b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(jaccard(&a, &a), 1.0);
        assert_eq!(jaccard(&[false; 3], &[false; 3]), 1.0);
    }

    #[test]
    fn cls_and_patch_rows_are_picked_correctly() {
        // 1 head, 3 tokens: attention[i][j] = 10 i + j.
        let att: Vec<f32> = (0..9).map(|k| (10 * (k / 3) + k % 3) as f32).collect();
        assert_eq!(cls_maps(&att, 1, 3, 1), vec![vec![1.0, 2.0]]);
        assert_eq!(patch_query_maps(&att, 1, 3, 1, 1), vec![vec![21.0, 22.0]]);
    }

    #[test]
    fn register_columns_are_skipped_and_register_rows_found() {
        // 2 heads, CLS + 2 registers + 2 patches: attention[h][i][j] = 100 h + 10 i + j.
        let t = 5;
        let att: Vec<f32> = (0..2 * t * t)
            .map(|k| (100 * (k / (t * t)) + 10 * ((k / t) % t) + k % t) as f32)
            .collect();
        assert_eq!(
            cls_maps(&att, 2, t, 3),
            vec![vec![3.0, 4.0], vec![103.0, 104.0]]
        );
        assert_eq!(patch_query_maps(&att, 2, t, 3, 1)[1], vec![143.0, 144.0]);
        let regs = register_maps(&att, 2, t, 3);
        assert_eq!(regs.len(), 2);
        assert_eq!(regs[1][0], vec![23.0, 24.0]);
    }

    #[test]
    fn upsampling_shapes_and_values() {
        let up = upsample_nearest(&[1, 2, 3, 4], 2, 2, 2);
        assert_eq!(up, vec![1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
        let smooth = upsample_bilinear(&[0.0, 1.0], 1, 2, 3, 4);
        assert_eq!(smooth.len(), 12);
        assert!(smooth[0] == 0.0 && smooth[3] == 1.0 && smooth[1] > 0.0 && smooth[1] < 1.0);
    }

    #[test]
    fn pca_finds_the_dominant_direction() {
        // Points spread along (1, 1, 0) with small noise in the third axis.
        let n = 50;
        let feats: Vec<f32> = (0..n)
            .flat_map(|i| {
                let t = i as f32 / n as f32;
                [t, t, 0.01 * ((i % 3) as f32)]
            })
            .collect();
        let rgb = pca_rgb(&feats, n, 3);
        let first: Vec<f32> = rgb.iter().map(|c| c[0]).collect();
        // The first component is monotonic in t (up to sign).
        let inc = first.windows(2).all(|w| w[1] >= w[0] - 1e-6);
        let dec = first.windows(2).all(|w| w[1] <= w[0] + 1e-6);
        assert!(inc || dec);
    }
}
