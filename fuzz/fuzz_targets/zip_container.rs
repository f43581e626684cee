//! Structure-aware fuzzing of the zip container around a `.pth`: entries named as a torch
//! archive names them (or almost), stored or deflated, whose headers may lie about their
//! sizes or point at another entry's stream. The pickle is a valid state dict naming the
//! storages, so that reading reaches every storage entry.
#![no_main]

use std::io::Write;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Entry {
    name: u8,
    data: Vec<u8>,
    /// Zeros appended to the data (a compressible bulk), in KiB.
    zeros_kib: u8,
    deflate: bool,
    /// A declared uncompressed size that replaces the true one.
    lie: Option<u32>,
    /// Another entry whose stream this entry's directory record points at.
    alias_of: Option<u8>,
}

const NAMES: [&str; 6] = [
    "archive/data.pkl",
    "archive/data/0",
    "archive/data/1",
    "archive/version",
    "other/data.pkl",
    "archive/data/0/x",
];

/// `{"a": tensor(storage 0, numel 16), "b": tensor(storage 1, numel 16)}`.
fn state_dict() -> Vec<u8> {
    let mut out = vec![0x80, 0x02, b'}', b'('];
    for (name, key) in [("a", "0"), ("b", "1")] {
        for s in [name] {
            out.push(b'X');
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        for s in ["storage"] {
            out.push(b'X');
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(b"ctorch\nFloatStorage\n");
        for s in [key, "cpu"] {
            out.push(b'X');
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(b"K\x10tQK\x00(K\x10t(K\x01t\x89)tR");
    }
    out.extend_from_slice(b"u.");
    out
}

/// Offsets of the central directory records, by entry index.
fn central_records(zip: &[u8]) -> Vec<usize> {
    (0..zip.len().saturating_sub(46))
        .filter(|&i| &zip[i..i + 4] == b"PK\x01\x02")
        .collect()
}

fuzz_target!(|entries: Vec<Entry>| {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut names = Vec::new();
    let mut has_pickle = false;
    for e in entries.iter().take(8) {
        let name = NAMES[e.name as usize % NAMES.len()];
        if names.contains(&name) {
            continue;
        }
        let method = if e.deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        if zip.start_file(name, opts).is_err() {
            return;
        }
        if name == "archive/data.pkl" && !has_pickle {
            has_pickle = true;
            zip.write_all(&state_dict()).unwrap();
        }
        zip.write_all(&e.data).unwrap();
        zip.write_all(&vec![0u8; usize::from(e.zeros_kib) << 10]).unwrap();
        names.push(name);
    }
    let Ok(cursor) = zip.finish() else { return };
    let mut bytes = cursor.into_inner();
    let records = central_records(&bytes);
    for (i, e) in entries.iter().take(records.len()).enumerate() {
        let r = records[i];
        if let Some(size) = e.lie {
            bytes[r + 24..r + 28].copy_from_slice(&size.to_le_bytes());
        }
        if let Some(j) = e.alias_of {
            let t = records[j as usize % records.len()];
            let target: [u8; 16] = bytes[t + 16..t + 28]
                .iter()
                .chain(&bytes[t + 42..t + 46])
                .copied()
                .collect::<Vec<u8>>()
                .try_into()
                .unwrap();
            bytes[r + 16..r + 28].copy_from_slice(&target[..12]);
            bytes[r + 42..r + 46].copy_from_slice(&target[12..]);
        }
    }
    let _ = dino_model::import::pth::read_pth(&bytes);
});
