//! Data sources for `--data`: an image folder, CIFAR-10 and STL-10 binaries, and the
//! synthetic objects set.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use image::{GrayImage, RgbImage};

use crate::data::synth;

/// File extensions read from image folders.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];
/// Suffix of ground-truth masks saved beside images (`0001.png` → `0001_mask.png`).
pub const MASK_SUFFIX: &str = "_mask";

/// One training or evaluation example.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The picture.
    pub image: RgbImage,
    /// Class index, when the source has labels.
    pub label: Option<usize>,
    /// Foreground mask (255 = object), when the source has masks.
    pub mask: Option<GrayImage>,
}

/// A random-access collection of samples, shared by the loader threads.
pub trait Source: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index` (< len). Errors name the file that failed.
    fn get(&self, index: usize) -> Result<Sample>;
    /// The class of sample `index` (< len), without decoding it where the source can.
    fn label(&self, index: usize) -> Result<Option<usize>> {
        Ok(self.get(index)?.label)
    }
    /// Class names in label order; empty when unlabelled.
    fn classes(&self) -> Vec<String>;
    /// A short description for logs.
    fn describe(&self) -> String;
    /// What identifies these samples and their order, saved with training checkpoints so
    /// that a resume on other data is noticed: by default the description and the count.
    fn fingerprint(&self) -> String {
        format!("{:016x}", fnv1a(self.describe().as_bytes()))
    }
}

/// FNV-1a, 64 bits: a hash that does not change between Rust versions (std's may), for
/// fingerprints stored in checkpoints.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A folder of images, searched recursively; first-level subfolders become class labels.
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    files: Vec<(PathBuf, Option<usize>)>,
    classes: Vec<String>,
    /// Files that were not images (skipped).
    pub skipped: usize,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_mask(path: &Path) -> bool {
    path.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| s.ends_with(MASK_SUFFIX))
}

fn walk(
    dir: &Path,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<PathBuf>,
    skipped: &mut usize,
) -> Result<()> {
    // Canonical paths guard against symlink loops.
    let canonical = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    if !seen.insert(canonical) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading folder {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if let Err(e) = walk(&path, seen, out, skipped) {
                log::warn!("skipping {}: {e:#}", path.display());
            }
        } else if is_image(&path) {
            if !is_mask(&path) {
                out.push(path);
            }
        } else {
            *skipped += 1;
        }
    }
    Ok(())
}

impl ImageFolder {
    /// Indexes every image under `root`.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            bail!("{} is not a folder of images", root.display());
        }
        let mut files = Vec::new();
        let mut skipped = 0;
        walk(root, &mut HashSet::new(), &mut files, &mut skipped)?;
        if files.is_empty() {
            bail!(
                "{} holds no images ({} other files); expected {} files, optionally in one subfolder per class",
                root.display(),
                skipped,
                IMAGE_EXTENSIONS.join("/")
            );
        }
        let class_of = |p: &PathBuf| -> Option<String> {
            let rel = p.strip_prefix(root).ok()?;
            let mut comps = rel.components();
            let first = comps.next()?;
            comps
                .next()
                .map(|_| first.as_os_str().to_string_lossy().into_owned())
        };
        let labelled = files.iter().all(|p| class_of(p).is_some());
        let mut classes: Vec<String> = if labelled {
            files.iter().filter_map(class_of).collect()
        } else {
            Vec::new()
        };
        classes.sort();
        classes.dedup();
        let files = files
            .into_iter()
            .map(|p| {
                let label = if labelled {
                    class_of(&p).and_then(|c| classes.iter().position(|x| *x == c))
                } else {
                    None
                };
                (p, label)
            })
            .collect();
        if skipped > 0 {
            log::warn!(
                "{}: skipped {skipped} files that are not images",
                root.display()
            );
        }
        Ok(Self {
            root: root.to_path_buf(),
            files,
            classes,
            skipped,
        })
    }

    /// Path of sample `index`.
    pub fn path(&self, index: usize) -> &Path {
        &self.files[index].0
    }
}

impl Source for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (path, label) = &self.files[index];
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let image = dino_model::preprocess::decode_image(&bytes)
            .with_context(|| format!("decoding {}", path.display()))?;
        let mask_path = path.with_file_name(format!(
            "{}{MASK_SUFFIX}.png",
            path.file_stem()
                .map(|s| s.to_string_lossy())
                .unwrap_or_default()
        ));
        let mask = if mask_path.is_file() {
            let m = image::open(&mask_path)
                .with_context(|| format!("decoding mask {}", mask_path.display()))?
                .to_luma8();
            if m.dimensions() != image.dimensions() {
                bail!(
                    "mask {} has a different size from its image",
                    mask_path.display()
                );
            }
            Some(m)
        } else {
            None
        };
        Ok(Sample {
            image,
            label: *label,
            mask,
        })
    }

    fn label(&self, index: usize) -> Result<Option<usize>> {
        Ok(self.files[index].1)
    }

    fn classes(&self) -> Vec<String> {
        self.classes.clone()
    }

    fn describe(&self) -> String {
        format!(
            "image folder {} ({} images, {} classes)",
            self.root.display(),
            self.files.len(),
            self.classes.len()
        )
    }

    /// Every file's path under the root and label, in sample order: a file added, removed or
    /// renamed changes it (edits in place do not).
    fn fingerprint(&self) -> String {
        let mut text = String::new();
        for (path, label) in &self.files {
            let rel = path.strip_prefix(&self.root).unwrap_or(path);
            text.push_str(&format!("{}\t{label:?}\n", rel.display()));
        }
        format!("{:016x}", fnv1a(text.as_bytes()))
    }
}

/// CIFAR-10 in its binary format: records of 1 label byte + 3072 bytes (R, G, B planes of 32×32).
pub struct Cifar10 {
    records: Vec<u8>,
    name: String,
}

/// CIFAR-10 class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

impl Cifar10 {
    /// Opens a `cifar-10-batches-bin` folder (the 5 training batches) or one `.bin` file.
    pub fn open(path: &Path) -> Result<Self> {
        let files: Vec<PathBuf> = if path.is_dir() {
            (1..=5)
                .map(|i| path.join(format!("data_batch_{i}.bin")))
                .collect()
        } else {
            vec![path.to_path_buf()]
        };
        let mut records = Vec::new();
        for f in &files {
            let mut b = std::fs::read(f)
                .with_context(|| format!("reading CIFAR-10 file {}", f.display()))?;
            if b.is_empty() || b.len() % CIFAR_RECORD != 0 {
                bail!(
                    "{} is not a CIFAR-10 binary batch (size {} is not a multiple of {CIFAR_RECORD})",
                    f.display(),
                    b.len()
                );
            }
            records.append(&mut b);
        }
        Ok(Self {
            records,
            name: path.display().to_string(),
        })
    }
}

impl Source for Cifar10 {
    fn len(&self) -> usize {
        self.records.len() / CIFAR_RECORD
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let r = &self.records[index * CIFAR_RECORD..(index + 1) * CIFAR_RECORD];
        let label = r[0] as usize;
        if label >= 10 {
            bail!(
                "{}: record {index} has label {label}, expected 0-9",
                self.name
            );
        }
        let px = &r[1..];
        let image = RgbImage::from_fn(32, 32, |x, y| {
            let i = (y * 32 + x) as usize;
            image::Rgb([px[i], px[1024 + i], px[2048 + i]])
        });
        Ok(Sample {
            image,
            label: Some(label),
            mask: None,
        })
    }

    fn label(&self, index: usize) -> Result<Option<usize>> {
        match self.records[index * CIFAR_RECORD] as usize {
            l @ 0..10 => Ok(Some(l)),
            l => bail!("{}: record {index} has label {l}, expected 0-9", self.name),
        }
    }

    fn classes(&self) -> Vec<String> {
        CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()
    }

    fn describe(&self) -> String {
        format!("CIFAR-10 {} ({} images)", self.name, self.len())
    }

    /// The records themselves.
    fn fingerprint(&self) -> String {
        format!("{:016x}", fnv1a(&self.records))
    }
}

/// STL-10 binaries: `*_X.bin` (96×96, channel planes stored column-major) with optional
/// `*_y.bin` labels (1-10).
pub struct Stl10 {
    file: Mutex<File>,
    count: usize,
    labels: Option<Vec<u8>>,
    name: String,
}

/// STL-10 class names in label order.
pub const STL10_CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];
const STL_IMAGE: usize = 3 * 96 * 96;

impl Stl10 {
    /// Opens an `*_X.bin` file, or a folder holding `unlabeled_X.bin` / `train_X.bin`.
    pub fn open(path: &Path) -> Result<Self> {
        let x = if path.is_dir() {
            ["train_X.bin", "unlabeled_X.bin"]
                .iter()
                .map(|n| path.join(n))
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "{} holds neither train_X.bin nor unlabeled_X.bin",
                        path.display()
                    )
                })?
        } else {
            path.to_path_buf()
        };
        let file =
            File::open(&x).with_context(|| format!("opening STL-10 file {}", x.display()))?;
        let size = file.metadata()?.len() as usize;
        if size == 0 || !size.is_multiple_of(STL_IMAGE) {
            bail!(
                "{} is not an STL-10 image file (size {size} is not a multiple of {STL_IMAGE})",
                x.display()
            );
        }
        let count = size / STL_IMAGE;
        let y = PathBuf::from(x.to_string_lossy().replace("_X.bin", "_y.bin"));
        let labels = if y != x && y.is_file() {
            let l = std::fs::read(&y).with_context(|| format!("reading {}", y.display()))?;
            if l.len() != count || l.iter().any(|&v| !(1..=10).contains(&v)) {
                bail!("{} does not hold {count} labels in 1-10", y.display());
            }
            Some(l)
        } else {
            None
        };
        Ok(Self {
            file: Mutex::new(file),
            count,
            labels,
            name: x.display().to_string(),
        })
    }
}

impl Source for Stl10 {
    fn len(&self) -> usize {
        self.count
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let mut buf = vec![0u8; STL_IMAGE];
        {
            let mut f = self
                .file
                .lock()
                .map_err(|_| anyhow::anyhow!("STL-10 reader poisoned"))?;
            f.seek(SeekFrom::Start((index * STL_IMAGE) as u64))?;
            f.read_exact(&mut buf)
                .with_context(|| format!("reading image {index} of {}", self.name))?;
        }
        let image = RgbImage::from_fn(96, 96, |x, y| {
            // Column-major planes: element (row y, col x) of channel c is at c·96² + x·96 + y.
            let i = (x * 96 + y) as usize;
            image::Rgb([buf[i], buf[9216 + i], buf[2 * 9216 + i]])
        });
        Ok(Sample {
            image,
            label: self.labels.as_ref().map(|l| l[index] as usize - 1),
            mask: None,
        })
    }

    fn label(&self, index: usize) -> Result<Option<usize>> {
        Ok(self.labels.as_ref().map(|l| l[index] as usize - 1))
    }

    fn classes(&self) -> Vec<String> {
        if self.labels.is_some() {
            STL10_CLASSES.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        }
    }

    fn describe(&self) -> String {
        format!(
            "STL-10 {} ({} images{})",
            self.name,
            self.count,
            if self.labels.is_some() {
                ", labelled"
            } else {
                ""
            }
        )
    }
}

/// The synthetic objects set, generated on the fly.
pub struct Synthetic {
    /// Seed of the set (different seeds give disjoint sets of scenes).
    pub seed: u64,
    /// Number of scenes.
    pub count: usize,
    /// Side of each scene in pixels.
    pub size: u32,
}

impl Source for Synthetic {
    fn len(&self) -> usize {
        self.count
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let s = synth::scene(self.seed, index as u64, self.size);
        Ok(Sample {
            image: s.image,
            label: Some(s.label),
            mask: Some(s.mask),
        })
    }

    fn classes(&self) -> Vec<String> {
        synth::CLASSES.iter().map(|s| s.to_string()).collect()
    }

    fn describe(&self) -> String {
        format!(
            "synthetic objects ({} scenes of {}px, seed {})",
            self.count, self.size, self.seed
        )
    }
}

/// Opens `--data`: `synthetic`, a CIFAR-10 or STL-10 binary folder/file, or an image folder.
pub fn open(
    spec: &str,
    synthetic_count: usize,
    synthetic_size: u32,
    seed: u64,
) -> Result<Box<dyn Source>> {
    if spec == "synthetic" {
        return Ok(Box::new(Synthetic {
            seed,
            count: synthetic_count,
            size: synthetic_size,
        }));
    }
    let path = Path::new(spec);
    if !path.exists() {
        bail!("--data {spec}: no such file or folder (use `synthetic` for the built-in set)");
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if path.join("data_batch_1.bin").is_file() || (name.ends_with(".bin") && name.contains("batch"))
    {
        return Ok(Box::new(Cifar10::open(path)?));
    }
    if path.join("train_X.bin").is_file()
        || path.join("unlabeled_X.bin").is_file()
        || name.ends_with("_x.bin")
    {
        return Ok(Box::new(Stl10::open(path)?));
    }
    Ok(Box::new(ImageFolder::open(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar_record_layout() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = vec![3u8];
        rec.extend((0..3072).map(|i| (i / 1024 * 100) as u8));
        std::fs::write(dir.path().join("test_batch.bin"), &rec).unwrap();
        let c = Cifar10::open(&dir.path().join("test_batch.bin")).unwrap();
        let s = c.get(0).unwrap();
        assert_eq!(s.label, Some(3));
        assert_eq!(s.image.get_pixel(5, 5).0, [0, 100, 200]);
        std::fs::write(dir.path().join("bad.bin"), [1u8; 10]).unwrap();
        assert!(Cifar10::open(&dir.path().join("bad.bin")).is_err());
    }

    #[test]
    fn stl_column_major_layout() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = vec![0u8; STL_IMAGE];
        img[96] = 255; // channel 0, column 1, row 0
        std::fs::write(dir.path().join("train_X.bin"), &img).unwrap();
        std::fs::write(dir.path().join("train_y.bin"), [4u8]).unwrap();
        let s = Stl10::open(dir.path()).unwrap();
        let sample = s.get(0).unwrap();
        assert_eq!(sample.label, Some(3));
        assert_eq!(sample.image.get_pixel(1, 0).0[0], 255);
        assert_eq!(sample.image.get_pixel(0, 1).0[0], 0);
    }

    #[test]
    fn image_folder_labels_skips_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            ImageFolder::open(dir.path())
                .unwrap_err()
                .to_string()
                .contains("holds no images")
        );
        for (class, n) in [("cats", 2), ("dogs", 1)] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for i in 0..n {
                RgbImage::new(8, 8)
                    .save(dir.path().join(class).join(format!("{i}.png")))
                    .unwrap();
            }
        }
        GrayImage::new(8, 8)
            .save(dir.path().join("cats").join("0_mask.png"))
            .unwrap();
        std::fs::write(dir.path().join("dogs").join("notes.txt"), "hi").unwrap();
        std::fs::write(dir.path().join("dogs").join("broken.jpg"), "not a jpeg").unwrap();
        let f = ImageFolder::open(dir.path()).unwrap();
        assert_eq!(f.classes(), vec!["cats", "dogs"]);
        assert_eq!(f.len(), 4);
        assert_eq!(f.skipped, 1);
        assert!(f.get(0).unwrap().mask.is_some());
        let broken = (0..f.len())
            .find(|&i| f.path(i).ends_with("broken.jpg"))
            .unwrap();
        assert!(format!("{:#}", f.get(broken).unwrap_err()).contains("broken.jpg"));
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path(), dir.path().join("cats").join("loop")).unwrap();
        assert_eq!(ImageFolder::open(dir.path()).unwrap().len(), 4);
    }
}
