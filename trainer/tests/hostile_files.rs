//! A corpus of small hostile files, built here (nothing large is committed), run through
//! `dino info`, `dino import` and `dino attention` as a user would run them: each must end
//! with exit code 1 and a message naming the file, never a panic, an abort or a stack
//! overflow, and within a bounded peak of memory (the model's own f32 size + 256 MiB over
//! what the binary takes to start), measured with `getrusage` of the child.
//!
//! The classes are those a reader of untrusted weights meets: views that repeat a stored
//! value (stride 0, overlap), containers shared through the pickle's memo (exponentially many
//! paths), huge lists, deeply nested values, archive entries that share a stream or lie about
//! their sizes, 0-d tensors where matrices belong, configs with absurd sizes, weights and
//! pixel statistics that are finite but absurd, a device instead of a file, and images whose
//! few bytes decode to gigabytes.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use dino_model::checkpoint::{KIND_MODEL, write_checkpoint};
use dino_model::{HeadConfig, ModelConfig, TensorMap, VitConfig};

/// What a run of `dino` left: exit code, stderr, peak resident memory in bytes.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    peak_rss: u64,
}

/// Runs `dino args` under a Python `getrusage` wrapper, so that the child's own peak RSS is
/// measured (the test process runs other children in parallel).
fn run(args: &[&std::ffi::OsStr]) -> Outcome {
    let wrapper = "import resource, subprocess, sys\n\
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n\
sys.stderr.buffer.write(r.stderr)\n\
print('\\nPEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n\
sys.exit(r.returncode if r.returncode >= 0 else 128 - r.returncode)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(wrapper)
        .arg(env!("CARGO_BIN_EXE_dino"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("python3 runs the measuring wrapper");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let peak_kb: u64 = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("PEAK_RSS_KB "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS reported: {stderr}"));
    Outcome {
        code: out.status.code(),
        stderr,
        peak_rss: peak_kb * 1024,
    }
}

/// A pickle, written opcode by opcode (protocol 2, as `torch.save` writes).
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 0x02])
    }
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&[0x8a, 8]);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn ints(&mut self, v: &[i64]) -> &mut Self {
        self.op(b"(");
        for &x in v {
            self.int(x);
        }
        self.op(b"t")
    }
    fn put(&mut self, memo: u32) -> &mut Self {
        self.op(b"r").op(&memo.to_le_bytes())
    }
    fn get(&mut self, memo: u32) -> &mut Self {
        self.op(b"j").op(&memo.to_le_bytes())
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, ())`.
    fn tensor(
        &mut self,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> &mut Self {
        self.op(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        self.op(b"(")
            .str("storage")
            .op(b"ctorch\nFloatStorage\n")
            .str(key)
            .str("cpu");
        self.int(numel).op(b"tQ");
        self.int(offset).ints(size).ints(stride).op(b"\x89)tR")
    }
    fn end(&mut self) -> Vec<u8> {
        self.0.push(b'.');
        std::mem::take(&mut self.0)
    }
}

/// A `torch.save`-style zip: `archive/data.pkl` and `archive/data/<key>` storages.
fn archive(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    for (key, bytes) in storages {
        zip.start_file(format!("archive/data/{key}"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    buf.into_inner()
}

/// A state dict of f32 tensors as `torch.save` writes it, one storage per tensor.
fn write_pth(map: &TensorMap) -> Vec<u8> {
    let mut p = Pickle::new();
    p.op(b"}(");
    let mut storages = Vec::new();
    for (i, (name, t)) in map.iter().enumerate() {
        let key = i.to_string();
        let size: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        let mut stride = vec![1i64; size.len()];
        for d in (0..size.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * size[d + 1];
        }
        p.str(name)
            .tensor(&key, t.numel() as i64, 0, &size, &stride);
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        storages.push((key, bytes));
    }
    p.op(b"u");
    let pickle = p.end();
    let refs: Vec<(&str, Vec<u8>)> = storages
        .iter()
        .map(|(k, b)| (k.as_str(), b.clone()))
        .collect();
    archive(&pickle, &refs)
}

/// Rewrites the sizes a zip's headers give for `name` (local header and central directory).
fn lie_about_size(zip: &mut [u8], name: &str, uncompressed: u32) {
    let name = name.as_bytes();
    // Local file header: signature, …, uncompressed size at +22, name length at +26, name at +30.
    let mut i = 0;
    while i + 4 <= zip.len() {
        let sig: [u8; 4] = zip[i..i + 4].try_into().unwrap();
        if &sig == b"PK\x03\x04" && zip[i + 30..].starts_with(name) {
            zip[i + 22..i + 26].copy_from_slice(&uncompressed.to_le_bytes());
        }
        // Central directory entry: uncompressed size at +24, name at +46.
        if &sig == b"PK\x01\x02" && zip[i + 46..].starts_with(name) {
            zip[i + 24..i + 28].copy_from_slice(&uncompressed.to_le_bytes());
        }
        i += 1;
    }
}

/// Points the central directory entry of `alias` at the local header of `target`.
fn share_stream(zip: &mut [u8], target: &str, alias: &str) {
    let find = |zip: &[u8], name: &str| -> usize {
        (0..zip.len() - 46)
            .find(|&i| {
                &zip[i..i + 4] == b"PK\x01\x02" && zip[i + 46..].starts_with(name.as_bytes())
            })
            .expect("central directory entry")
    };
    let (t, a) = (find(zip, target), find(zip, alias));
    let offset: [u8; 4] = zip[t + 42..t + 46].try_into().unwrap();
    let sizes: [u8; 12] = zip[t + 16..t + 28].try_into().unwrap();
    zip[a + 42..a + 46].copy_from_slice(&offset);
    zip[a + 16..a + 28].copy_from_slice(&sizes);
}

/// A tiny DINO model as a dinoscope checkpoint, its tensors passed through `edit`.
fn tiny_checkpoint(config: &ModelConfig, edit: impl Fn(&mut TensorMap)) -> Vec<u8> {
    let device = burn::tensor::Device::flex();
    let model = tiny_config().init(&device).unwrap();
    let mut map = TensorMap::new();
    model.save_tensors(&mut map, "");
    edit(&mut map);
    write_checkpoint(config, KIND_MODEL, &map, &Default::default()).unwrap()
}

fn tiny_config() -> ModelConfig {
    let mut vit = VitConfig::vit_tiny(8);
    vit.depth = 1;
    vit.img_size = 16;
    let head = HeadConfig {
        hidden_dim: 32,
        bottleneck_dim: 16,
        ..HeadConfig::dino(vit.embed_dim, 32)
    };
    ModelConfig {
        vit,
        head: Some(head),
        ibot_head: None,
    }
}

/// A PNG of `w × h` grey pixels, all 0, written row by row (never held whole).
fn grey_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(std::io::Cursor::new(&mut out), w, h);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut writer = enc.write_header().unwrap();
    let mut stream = writer.stream_writer().unwrap();
    let row = vec![0u8; w as usize];
    for _ in 0..h {
        stream.write_all(&row).unwrap();
    }
    stream.finish().unwrap();
    drop(writer);
    out
}

/// A 16 × 16 RGB PNG whose ICC profile decompresses to `profile_bytes` zeros.
fn png_with_icc(profile_bytes: usize) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let small = {
        let mut out = Vec::new();
        image::RgbImage::new(16, 16)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..profile_bytes >> 20 {
        zlib.write_all(&zeros).unwrap();
    }
    let mut iccp = b"bomb\0\0".to_vec();
    iccp.extend_from_slice(&zlib.finish().unwrap());
    // The signature and IHDR of the small PNG, the profile, then its IDAT and IEND.
    let ihdr_end = 8 + 8 + 13 + 4;
    let mut out = small[..ihdr_end].to_vec();
    chunk(&mut out, b"iCCP", &iccp);
    out.extend_from_slice(&small[ihdr_end..]);
    out
}

/// One hostile case: the file, which command reads it and what its message must say.
struct Case {
    name: &'static str,
    file: PathBuf,
    command: &'static str,
    expect: Vec<&'static str>,
}

#[test]
fn hostile_files_end_in_an_error_within_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut cases = Vec::new();
    let mut case = |name, file, command, expect| {
        cases.push(Case {
            name,
            file,
            command,
            expect,
        })
    };

    // Views: one stored float as a 65536 × 65536 matrix; strides that overlap.
    let mut p = Pickle::new();
    p.op(b"}").str("patch_embed.proj.weight");
    p.tensor("0", 1, 0, &[65536, 65536], &[0, 0]).op(b"s");
    let f = write("stride0.pth", &archive(&p.end(), &[("0", vec![0; 4])]));
    case(
        "stride 0",
        f,
        "info",
        vec!["stride0.pth", "more elements than its storage"],
    );
    let mut p = Pickle::new();
    p.op(b"}")
        .str("w")
        .tensor("0", 10_000, 0, &[100, 100], &[1, 1])
        .op(b"s");
    let f = write("overlap.pth", &archive(&p.end(), &[("0", vec![0; 40_000])]));
    case(
        "overlapping strides",
        f,
        "info",
        vec!["overlap.pth", "repeats elements"],
    );

    // The memo: 30 dicts, each naming the previous one twice: 2^30 paths to one 4 MiB tensor.
    let mut p = Pickle::new();
    p.op(b"}")
        .put(0)
        .op(b"(")
        .str("a")
        .tensor("0", 1 << 20, 0, &[1 << 20], &[1]);
    p.put(1).str("b").get(1).op(b"u");
    for level in 1..30u32 {
        p.op(b"}")
            .put(2 * level)
            .op(b"(")
            .str("a")
            .get(2 * level - 2);
        p.str("b").get(2 * level - 2).op(b"u");
    }
    let f = write("laughs.pth", &archive(&p.end(), &[("0", vec![0; 4 << 20])]));
    case(
        "shared containers",
        f,
        "import",
        vec!["laughs.pth", "same data over and over"],
    );

    // Three million list items; two million nested one-element tuples.
    let mut p = Pickle::new();
    p.op(b"](");
    for _ in 0..3_000_000 {
        p.op(b"K\x01");
    }
    p.op(b"e");
    let f = write("items.pth", &archive(&p.end(), &[]));
    case("huge list", f, "info", vec!["items.pth", "pickle"]);
    let mut p = Pickle::new();
    p.op(b"N");
    for _ in 0..2_000_000 {
        p.op(b"\x85");
    }
    let f = write("deep.pth", &archive(&p.end(), &[]));
    case("deep nesting", f, "info", vec!["deep.pth"]);

    // The archive: two names for one stream; sizes that lie, up and down.
    let mut p = Pickle::new();
    p.op(b"}(").str("a").tensor("0", 4, 0, &[4], &[1]);
    p.str("b").tensor("1", 4, 0, &[4], &[1]).op(b"u");
    let mut zip = archive(&p.end(), &[("0", vec![0; 16]), ("1", vec![0; 16])]);
    share_stream(&mut zip, "archive/data/0", "archive/data/1");
    let f = write("shared_stream.pth", &zip);
    case(
        "one stream, two names",
        f,
        "info",
        vec!["shared_stream.pth", "under two names"],
    );
    let bomb = {
        let mut p = Pickle::new();
        p.op(b"}").str("w").tensor("0", 1, 0, &[1], &[1]).op(b"s");
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut buf);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", stored).unwrap();
        zip.write_all(&p.end()).unwrap();
        let deflated = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("archive/data/0", deflated).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            zip.write_all(&zeros).unwrap();
        }
        zip.finish().unwrap();
        buf.into_inner()
    };
    let mut under = bomb.clone();
    lie_about_size(&mut under, "archive/data/0", 4);
    let f = write("size_under.pth", &under);
    case(
        "a stream longer than it says",
        f,
        "info",
        vec!["size_under.pth", "where the archive says 4"],
    );
    let mut over = bomb;
    lie_about_size(&mut over, "archive/data/0", u32::MAX - 1);
    let f = write("size_over.pth", &over);
    case(
        "a size far beyond the stream",
        f,
        "info",
        vec!["size_over.pth"],
    );

    // 0-d tensors where the importer expects matrices.
    let backbone = dino_model::import::pth::read_pth(
        &std::fs::read(format!(
            "{}/../model/tests/fixtures/official_backbone.pth",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    for (file, tensor) in [
        ("zero_d_fc1.pth", "blocks.0.mlp.fc1.weight"),
        ("zero_d_patch.pth", "patch_embed.proj.weight"),
    ] {
        let mut map = backbone.clone();
        map.insert(tensor.into(), dino_model::RawTensor::new(vec![], vec![1.0]));
        let f = write(file, &write_pth(&map));
        case("a 0-d weight", f, "info", vec![file]);
    }

    // Configs that ask for absurd sizes (the tensors stay those of a one-block model).
    for (file, edit) in [
        (
            "depth.safetensors",
            (|c: &mut ModelConfig| c.vit.depth = 1_000_000_000_000) as fn(&mut ModelConfig),
        ),
        ("nlayers.safetensors", |c| {
            c.head.as_mut().unwrap().nlayers = 1 << 62
        }),
        ("img_size.safetensors", |c| {
            c.vit.img_size = (1usize << 63) + 8
        }),
        ("eps.safetensors", |c| c.vit.layer_norm_eps = 1e308),
    ] {
        let mut config = tiny_config();
        edit(&mut config);
        let f = write(file, &tiny_checkpoint(&config, |_| {}));
        case(
            "an absurd config",
            f,
            "info",
            vec![file, "invalid model configuration"],
        );
    }

    // Finite weights so large that the network's outputs overflow.
    let f = write(
        "huge_weights.safetensors",
        &tiny_checkpoint(&tiny_config(), |map| {
            for t in map.values_mut() {
                t.data.iter_mut().for_each(|v| *v = 1e30);
            }
        }),
    );
    case("huge weights", f, "attention", vec!["not finite"]);

    // Hugging Face files whose config.json or preprocessor_config.json is absurd.
    let hf = format!(
        "{}/../model/tests/fixtures/families/v2reg_hf",
        env!("CARGO_MANIFEST_DIR")
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{hf}/config.json")).unwrap())
            .unwrap();
    for (folder, field, value) in [
        ("hf_image_size", "image_size", serde_json::json!(u64::MAX)),
        ("hf_eps", "layer_norm_eps", serde_json::json!(1e308)),
    ] {
        let sub = d.join(folder);
        std::fs::create_dir(&sub).unwrap();
        std::fs::copy(
            format!("{hf}/model.safetensors"),
            sub.join("model.safetensors"),
        )
        .unwrap();
        let mut c = config.clone();
        c[field] = value;
        std::fs::write(sub.join("config.json"), c.to_string()).unwrap();
        case(
            "an absurd Hugging Face config",
            sub.join("model.safetensors"),
            "info",
            vec![folder],
        );
    }
    let sub = d.join("hf_mean");
    std::fs::create_dir(&sub).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(format!("{hf}/{f}"), sub.join(f)).unwrap();
    }
    std::fs::write(
        sub.join("preprocessor_config.json"),
        r#"{"image_mean": [1e300, 0.4, 0.4], "image_std": [0.2, 0.2, 0.2]}"#,
    )
    .unwrap();
    case(
        "absurd pixel statistics",
        sub.join("model.safetensors"),
        "attention",
        vec!["preprocessor_config.json", "image_mean"],
    );

    // A device instead of a file: it says it holds nothing and never ends.
    case(
        "/dev/zero",
        PathBuf::from("/dev/zero"),
        "info",
        vec!["/dev/zero", "not a regular file"],
    );

    // Images: 260 KB that decode to 16384² grey pixels; an ICC profile of 1 GiB of zeros.
    let model = write("tiny.safetensors", &tiny_checkpoint(&tiny_config(), |_| {}));
    let big = write("big_grey.png", &grey_png(16384, 16384));
    let icc = write("icc_bomb.png", &png_with_icc(1 << 30));

    // What the binary takes to start and read a tiny model: the bound is measured above it.
    let base = run(&["info".as_ref(), model.as_os_str()]);
    assert_eq!(base.code, Some(0), "{}", base.stderr);
    let bound = base.peak_rss + (256 << 20);
    let out_dir = d.join("maps");
    let imported = d.join("out.safetensors");
    let image = d.join("ok.png");
    image::RgbImage::new(32, 32).save(&image).unwrap();
    let mut failures = Vec::new();
    // `may_succeed`: a file that is not hostile to a careful reader (an ICC profile is not
    // needed to show an image) may be read; it must still stay within the bound.
    let mut check =
        |name: &str, args: Vec<&std::ffi::OsStr>, expect: &[&str], may_succeed: bool| {
            let o = run(&args);
            let mut wrong = Vec::new();
            let succeeded = may_succeed && o.code == Some(0);
            if o.code != Some(1) && !succeeded {
                wrong.push(format!("exit code {:?} (1 expected)", o.code));
            }
            let expect = if succeeded { &[][..] } else { expect };
            for e in expect {
                if !o.stderr.contains(e) {
                    wrong.push(format!("no {e:?} in the message"));
                }
            }
            if o.peak_rss > bound {
                wrong.push(format!(
                    "peak RSS {} MiB above the bound {} MiB",
                    o.peak_rss >> 20,
                    bound >> 20
                ));
            }
            println!("{name}: exit {:?}, peak {} MiB", o.code, o.peak_rss >> 20);
            if !wrong.is_empty() {
                failures.push(format!("{name}: {}\n{}", wrong.join("; "), o.stderr));
            }
        };
    for c in &cases {
        let mut args: Vec<&std::ffi::OsStr> = vec![c.command.as_ref()];
        match c.command {
            "info" => args.push(c.file.as_os_str()),
            "import" => args.extend([c.file.as_os_str(), "-o".as_ref(), imported.as_os_str()]),
            _ => args.extend([
                "--checkpoint".as_ref(),
                c.file.as_os_str(),
                "--image".as_ref(),
                image.as_os_str(),
                "--image-size".as_ref(),
                "16".as_ref(),
                "-o".as_ref(),
                out_dir.as_os_str(),
            ]),
        }
        check(c.name, args, &c.expect, false);
    }
    for (name, img, expect, may_succeed) in [
        (
            "a 16384² grey PNG",
            &big,
            &["big_grey.png", "megapixels"][..],
            false,
        ),
        ("an ICC profile bomb", &icc, &["icc_bomb.png"][..], true),
    ] {
        let args: Vec<&std::ffi::OsStr> = vec![
            "attention".as_ref(),
            "--checkpoint".as_ref(),
            model.as_os_str(),
            "--image".as_ref(),
            img.as_os_str(),
            "--image-size".as_ref(),
            "32".as_ref(),
            "-o".as_ref(),
            out_dir.as_os_str(),
        ];
        check(name, args, expect, may_succeed);
    }
    assert!(
        failures.is_empty(),
        "{} of the hostile files were mishandled:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
