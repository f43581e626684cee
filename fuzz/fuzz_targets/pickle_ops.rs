//! Structure-aware fuzzing of the pickle VM: the input is decoded (with `arbitrary`) into a
//! sequence of the opcodes `torch.save` emits and their arguments — containers, memo puts and
//! gets, tensors with any offset, size and stride, allowed and refused globals — written as a
//! pickle beside storages of fuzzed sizes. Random bytes rarely get past a pickle's first
//! opcodes; these reach the memo, the views and `flatten`.
#![no_main]

use std::io::Write;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    EmptyDict,
    EmptyList,
    EmptyTuple,
    Mark,
    Name(u8),
    Int(i64),
    Tensor {
        storage: u8,
        numel: u16,
        offset: u16,
        size: Vec<u16>,
        stride: Vec<u16>,
    },
    Put(u8),
    Get(u8),
    Tuple(u8),
    TupleMark,
    ListMark,
    DictMark,
    SetItem,
    SetItems,
    Append,
    Appends,
    Pop,
    Dup,
    Global(u8),
    Reduce,
    Build,
    None,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    storages: [u16; 3],
}

const NAMES: [&str; 6] = [
    "patch_embed.proj.weight",
    "teacher",
    "backbone.blocks.0.attn.qkv.weight",
    "state_dict",
    "cls_token",
    "model",
];
const GLOBALS: [&[u8]; 5] = [
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ccollections\nOrderedDict\n",
    b"ctorch._utils\n_rebuild_parameter\n",
    b"cargparse\nNamespace\n",
    b"cos\nsystem\n",
];

fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&[0x8a, 8]);
    out.extend_from_slice(&v.to_le_bytes());
}

fn ints(out: &mut Vec<u8>, v: &[u16]) {
    out.push(b'(');
    for &x in v.iter().take(5) {
        int(out, x.into());
    }
    out.push(b't');
}

fn pickle(ops: &[Op]) -> Vec<u8> {
    let mut out = vec![0x80, 0x02];
    for op in ops {
        match op {
            Op::EmptyDict => out.push(b'}'),
            Op::EmptyList => out.push(b']'),
            Op::EmptyTuple => out.push(b')'),
            Op::Mark => out.push(b'('),
            Op::Name(i) => string(&mut out, NAMES[*i as usize % NAMES.len()]),
            Op::Int(v) => int(&mut out, *v),
            Op::Tensor {
                storage,
                numel,
                offset,
                size,
                stride,
            } => {
                out.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
                string(&mut out, "storage");
                out.extend_from_slice(b"ctorch\nFloatStorage\n");
                string(&mut out, &(storage % 3).to_string());
                string(&mut out, "cpu");
                int(&mut out, (*numel).into());
                out.extend_from_slice(b"tQ");
                int(&mut out, (*offset).into());
                ints(&mut out, size);
                ints(&mut out, stride);
                out.extend_from_slice(b"\x89)tR");
            }
            Op::Put(k) => out.extend_from_slice(&[b'q', *k]),
            Op::Get(k) => out.extend_from_slice(&[b'h', *k]),
            Op::Tuple(n) => out.push(0x85 + n % 3),
            Op::TupleMark => out.push(b't'),
            Op::ListMark => out.push(b'l'),
            Op::DictMark => out.push(b'd'),
            Op::SetItem => out.push(b's'),
            Op::SetItems => out.push(b'u'),
            Op::Append => out.push(b'a'),
            Op::Appends => out.push(b'e'),
            Op::Pop => out.push(b'0'),
            Op::Dup => out.push(b'2'),
            Op::Global(i) => out.extend_from_slice(GLOBALS[*i as usize % GLOBALS.len()]),
            Op::Reduce => out.push(b'R'),
            Op::Build => out.push(b'b'),
            Op::None => out.push(b'N'),
        }
    }
    out.push(b'.');
    out
}

fuzz_target!(|input: Input| {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(&pickle(&input.ops)).unwrap();
    for (i, &n) in input.storages.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), stored).unwrap();
        zip.write_all(&vec![0u8; 4 * usize::from(n % 4096)]).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    if dino_model::import::pth::read_pth(&bytes).is_ok() {
        let _ = dino_model::import::import_bytes(&bytes, dino_model::import::Which::Teacher);
    }
});
